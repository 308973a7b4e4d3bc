"""Cluster-wide preheat through Dragonfly's manager: a ``preheat`` job (``POST /oapi/v1/jobs``,
a personal access token) has the cluster's peers download objects before anyone asks for them,
and ``follow`` watches it to its end.

A preheat helps only if it warms the very task a later download asks for, and Dragonfly names a
task by its URL without the filtered query parameters, its tag and its application (preheat and
download IDs that differ are users' most common preheat complaint). So a job carries exactly
what shim sends the node's dfdaemon: a freshly signed URL (the peers fetch from a private
bucket; its signature parameters are in the filter list), the same filter list (joined with
``&`` here, with ``,`` in the proxy header), the tag naming the object's current ETag (see
shim.freshness) and the application. One job per filter list and tag (objects of other
stores, other versions).

How manager v2.5.1 runs it: one machinery task per scheduler cluster, queued in Redis for one
of its schedulers (``scheduler_CLUSTER_HOSTNAME_IP``). The scheduler's job worker has the scope's
hosts download each URL over gRPC, as a normal task: ``all_peers`` every peer (shim's default:
every node holds the object before traffic shifts), ``all_seed_peers`` every seed peer,
``single_seed_peer`` (Dragonfly's default) one seed peer, which the nodes then fetch from. The
task's answer names the hosts that succeeded and failed; the manager reads it back 30 s after
the job starts, then backing off to every 5 min, so no job shows as done sooner.

A job is a success here only when the manager says so *and* every URL was downloaded by a host
and failed by none: a single-seed-peer job whose download failed still ends in SUCCESS, with no
host (the scheduler only logs the error). What the manager repeats of a signed URL (its job
arguments, peers' error messages) is never shown: URLs are named as the user gave them, and
every message is redacted with the signatures of the job's URLs. The token goes in one header,
to the manager only: no proxy from the environment (that may be shim itself), no redirect.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from shim._errors import ShimError
from shim.redact import redact_error_body, redact_url

JOBS_PATH = "/oapi/v1/jobs"
SUCCESS, FAILURE = "SUCCESS", "FAILURE"
# The manager re-reads a job's state at most every 5 min: past its own timeout a job may take
# that long to show as ended.
MANAGER_POLL_LIMIT = 300.0
# Job JSON can list hundreds of hosts; more than this from a manager is an error, not memory.
MAX_RESPONSE_BYTES = 16 << 20
# Sends of a job creation the manager refuses with 429 (its per-cluster job rate limit), and
# the pause before the first resend (doubled for each next one).
CREATE_ATTEMPTS = 5
FIRST_BACKOFF = 1.0


class ManagerError(ShimError):
    """The manager could not be asked, or refused; the message never holds the token."""


@dataclass(frozen=True, slots=True)
class Target:
    """One object to preheat, as shim would ask its dfdaemon for it."""

    url: str  # as the user gave it: the only form shown
    signed_url: str  # what the peers fetch
    filtered: tuple[str, ...]  # the query parameters left out of the task ID
    tag: str
    task_id: str  # the dfdaemon's task ID for it, as shim computes it


@dataclass(frozen=True, slots=True)
class Plan:
    """The objects of one job: all with the same filter list and tag."""

    filtered: tuple[str, ...]
    tag: str
    targets: tuple[Target, ...]


@dataclass(frozen=True, slots=True)
class JobOptions:
    application: str
    scope: str
    scheduler_cluster_ids: tuple[int, ...] = ()
    timeout: float = 3600.0  # seconds the peers may take


def plan_jobs(targets: Iterable[Target]) -> list[Plan]:
    """One plan per filter list and tag, in the order they first appear; a URL given twice
    is preheated once."""
    groups: dict[tuple[tuple[str, ...], str], dict[str, Target]] = {}
    for target in targets:
        group = groups.setdefault((target.filtered, target.tag), {})
        group.setdefault(target.signed_url, target)
    return [Plan(*key, tuple(group.values())) for key, group in groups.items()]


def job_request(plan: Plan, options: JobOptions) -> dict[str, Any]:
    """The body of ``POST /oapi/v1/jobs`` for ``plan``. The timeout bounds the peers'
    downloads; the manager reads it as a Go duration, in nanoseconds."""
    body: dict[str, Any] = {
        "type": "preheat",
        "args": {
            "type": "file",
            "urls": [target.signed_url for target in plan.targets],
            "filtered_query_params": "&".join(plan.filtered),
            "tag": plan.tag,
            "application": options.application,
            "scope": options.scope,
            "timeout": round(options.timeout * 1e9),
        },
    }
    if options.scheduler_cluster_ids:
        body["scheduler_cluster_ids"] = list(options.scheduler_cluster_ids)
    return body


@dataclass(frozen=True, slots=True)
class HostResult:
    hostname: str
    ip: str
    url: str  # the signed URL the host was given
    description: str = ""  # why it failed

    @property
    def host(self) -> str:
        return f"{self.hostname} ({self.ip})"


@dataclass(frozen=True, slots=True)
class JobReport:
    """What a job says of itself (``GET /oapi/v1/jobs/ID``)."""

    id: int
    group: str  # the manager's task ID for the job (its machinery group)
    state: str  # PENDING, ..., SUCCESS or FAILURE
    succeeded: tuple[HostResult, ...] = ()
    failed: tuple[HostResult, ...] = ()
    errors: tuple[str, ...] = ()  # of the job's tasks (one per scheduler cluster)

    @property
    def ended(self) -> bool:
        return self.state in (SUCCESS, FAILURE)


def read_job(job: Any) -> JobReport:
    """The report of a job as the manager answers it; ManagerError if it is not a job."""
    try:
        result = job.get("result") or {}
        states = result.get("job_states") or []
        succeeded, failed, errors = [], [], []
        for state in states:
            if state.get("error"):
                errors.append(str(state["error"]))
            for answer in state.get("results") or []:
                succeeded += [_host(task) for task in answer.get("success_tasks") or []]
                failed += [_host(task) for task in answer.get("failure_tasks") or []]
        return JobReport(
            id=int(job["id"]),
            group=str(job.get("task_id", "")),
            state=str(job["state"]),
            succeeded=tuple(succeeded),
            failed=tuple(failed),
            errors=tuple(errors),
        )
    except (AttributeError, KeyError, TypeError, ValueError):
        raise ManagerError("the manager's answer is not a job") from None


def _host(task: Mapping[str, Any]) -> HostResult:
    return HostResult(
        hostname=str(task.get("hostname", "")),
        ip=str(task.get("ip", "")),
        url=str(task.get("url", "")),
        description=str(task.get("description", "")),
    )


def redact(text: str, targets: Iterable[Target]) -> str:
    """``text`` without any secret of the targets' signed URLs."""
    data = text.encode()
    for target in targets:
        data = redact_error_body(data, target.signed_url)
    return data.decode(errors="replace")


@dataclass(frozen=True, slots=True)
class Verdict:
    """Per URL of a plan, the hosts that hold it; and what went wrong, if anything."""

    hosts: dict[str, tuple[str, ...]]  # target URL -> "hostname (ip)" of each host
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def judge(report: JobReport, plan: Plan) -> Verdict:
    """Whether the ended job ``report`` preheated every URL of ``plan``, and where."""
    by_signed = {target.signed_url: target for target in plan.targets}
    hosts: dict[str, list[str]] = {target.url: [] for target in plan.targets}
    problems: list[str] = []
    for result in report.succeeded:
        if result.url in by_signed:
            hosts[by_signed[result.url].url].append(result.host)
    for result in report.failed:
        target = by_signed.get(result.url)
        what = redact_url(target.url) if target else "a URL"
        problems.append(f"{result.host} failed {what}: {result.description or 'no reason given'}")
    if report.state == FAILURE:
        reasons = "; ".join(report.errors) or "no reason given (the manager may have given up)"
        problems.append(f"failed: {reasons}")
    elif report.state == SUCCESS and not report.failed:
        problems += [
            f"{redact_url(target.url)}: no peer reports it downloaded"
            for target in plan.targets
            if not hosts[target.url]
        ]
    elif not report.ended:
        problems.append(f"has not ended: {report.state}")
    return Verdict(
        hosts={url: tuple(found) for url, found in hosts.items()},
        problems=tuple(redact(problem, plan.targets) for problem in problems),
    )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect would carry the token to wherever it points.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class ManagerClient:
    """The manager's open API (``/oapi/v1``), authenticated by a personal access token."""

    def __init__(self, url: str, token: SecretStr, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())

    def create_job(self, body: Mapping[str, Any]) -> Any:
        """Create a job; sent again while the manager answers 429 (its job rate limit)."""
        for attempt in range(CREATE_ATTEMPTS):
            try:
                return self._send("POST", JOBS_PATH, body)
            except _RateLimited:
                if attempt + 1 < CREATE_ATTEMPTS:
                    time.sleep(FIRST_BACKOFF * 2**attempt)
        raise ManagerError(
            f"the manager at {self.url} answered 429 (rate limit exceeded) {CREATE_ATTEMPTS} "
            "times; it answers so too for a scheduler cluster ID it does not know"
        )

    def job(self, job_id: int) -> Any:
        return self._send("GET", f"{JOBS_PATH}/{job_id}")

    def _send(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        request = urllib.request.Request(  # noqa: S310 (the configured http(s) URL)
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {self._token.get_secret_value()}",
                "Accept": "application/json",
                **({} if body is None else {"Content-Type": "application/json"}),
            },
        )
        where = f"{method} {self.url}{path}"
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                return json.loads(_read_bounded(response, where))
        except urllib.error.HTTPError as error:
            with error:
                message = _message(_read_bounded(error, where))
            if error.code == 429:
                raise _RateLimited from None
            if 300 <= error.code < 400:
                message = f"a redirect to {error.headers.get('Location')}, not followed"
            hint = _HINTS.get(error.code, "")
            raise ManagerError(f"{where}: {error.code} {message}{hint}") from None
        except urllib.error.URLError as error:
            raise ManagerError(f"{where}: the manager is unreachable: {error.reason}") from None
        except (OSError, ValueError) as error:
            raise ManagerError(f"{where}: {type(error).__name__}: {error}") from None


class _RateLimited(Exception):
    pass


_HINTS = {
    401: " (is the token a personal access token of this manager?)",
    403: " (the token is inactive, expired, or lacks the job scope)",
}


def _read_bounded(response: Any, where: str) -> bytes:
    data: bytes = response.read(MAX_RESPONSE_BYTES + 1)
    if len(data) > MAX_RESPONSE_BYTES:
        raise ManagerError(f"{where}: the answer exceeds {MAX_RESPONSE_BYTES >> 20} MiB")
    return data


def _message(body: bytes) -> str:
    """The reason in a manager's error answer: ``{"message"}``, ``{"errors"}`` or text."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        found = parsed.get("message") or parsed.get("errors")
        if found:
            return str(found)
    return body.decode(errors="replace").strip()[:500] or "(no reason given)"


def follow(
    client: ManagerClient,
    job_ids: Sequence[int],
    *,
    wait: float,
    interval: float,
    on_change: Callable[[JobReport], None],
) -> dict[int, JobReport]:
    """Poll the jobs every ``interval`` s until all ended or ``wait`` s passed; ``on_change`` is
    called with each job's report when its state changes. Returns the last reports."""
    deadline = time.monotonic() + wait
    reports: dict[int, JobReport] = {}
    while True:
        for job_id in job_ids:
            if job_id in reports and reports[job_id].ended:
                continue
            report = read_job(client.job(job_id))
            if job_id not in reports or reports[job_id].state != report.state:
                on_change(report)
            reports[job_id] = report
        if all(report.ended for report in reports.values()) or time.monotonic() >= deadline:
            return reports
        time.sleep(interval)


def run(
    client: ManagerClient,
    targets: Sequence[Target],
    options: JobOptions,
    *,
    interval: float,
    say: Callable[[str], None],
) -> list[str]:
    """Create the jobs that preheat ``targets``, follow them to their end, and return what
    went wrong (nothing: every object is on its hosts). ``say`` gets each line to show.
    ManagerError (redacted) when the manager cannot be asked."""
    try:
        plans: dict[int, Plan] = {}
        for plan in plan_jobs(targets):
            job = read_job(client.create_job(job_request(plan, options)))
            plans[job.id] = plan
            say(
                f"job {job.id} ({job.group}) at {client.url}: preheat {len(plan.targets)} "
                f"object(s) on {options.scope}, tag {plan.tag!r}, "
                f"application {options.application!r}"
            )
            for target in plan.targets:
                say(f"  {redact_url(target.url)}  task {target.task_id}")
        started = time.monotonic()
        reports = follow(
            client,
            list(plans),
            wait=options.timeout + MANAGER_POLL_LIMIT,
            interval=interval,
            on_change=lambda report: say(
                f"job {report.id}: {report.state} after {time.monotonic() - started:.0f} s"
            ),
        )
    except ManagerError as error:
        raise ManagerError(redact(str(error), targets)) from None
    problems = []
    for job_id, plan in plans.items():
        verdict = judge(reports[job_id], plan)
        for target in plan.targets:
            hosts = ", ".join(verdict.hosts[target.url]) or "no host"
            say(f"{redact_url(target.url)}  task {target.task_id}  on {hosts}")
        problems += [f"job {job_id}: {problem}" for problem in verdict.problems]
    return problems
