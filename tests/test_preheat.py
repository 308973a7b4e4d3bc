"""Preheat through Dragonfly's manager: the job shim asks for and how it reads the answer.

The job shapes are those manager v2.5.1 answers (tests/integration/test_preheat.py runs the
real one); these tests pin what shim makes of each case, failures the real cluster there does
not produce included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from shim.preheat import (
    JobOptions,
    ManagerClient,
    ManagerError,
    Plan,
    Target,
    job_request,
    judge,
    plan_jobs,
    read_job,
)
from shim.providers import PROVIDERS
from shim.redact import redact_url
from tests.support.nginx import start_nginx

SIGNATURE = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
SIGNED = (
    "https://models.s3.amazonaws.com/resnet.mar?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIDEXAMPLE%2F20261130%2Fus-east-1%2Fs3%2Faws4_request"
    f"&X-Amz-Date=20261130T191705Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
    f"&X-Amz-Signature={SIGNATURE}"
)
URL = "https://models.s3.amazonaws.com/resnet.mar"
S3_FILTER = tuple(sorted(PROVIDERS["s3"].signature_params))


def _target(url: str = URL, signed: str = SIGNED, tag: str = ';etag="abc"') -> Target:
    return Target(url, signed, S3_FILTER, tag, "task-" + url[-12:])


def _job(state: str, *answers: dict[str, Any], error: str = "") -> dict[str, Any]:
    """A job as GET /oapi/v1/jobs/ID answers it, one task (one scheduler cluster)."""
    return {
        "id": 7,
        "task_id": "group_59b13d08",
        "type": "preheat",
        "state": state,
        "args": {"urls": [SIGNED]},
        "result": {
            "state": state,
            "job_states": [
                {"state": state, "error": error, "results": list(answers) or None},
            ],
        },
    }


def _host(name: str, url: str = SIGNED, description: str | None = None) -> dict[str, str]:
    host = {"hostname": name, "ip": "10.0.0.1", "url": url}
    if description is not None:
        host["description"] = description
    return host


# -- the request ----------------------------------------------------------------------------


def test_the_job_carries_what_shim_sends_the_dfdaemon() -> None:
    (plan,) = plan_jobs([_target()])
    options = JobOptions("serving", "all_peers", (1, 3), timeout=90.0)
    assert job_request(plan, options) == {
        "type": "preheat",
        "args": {
            "type": "file",
            "urls": [SIGNED],
            # '&' between names: the manager splits on it (the proxy header uses ',').
            "filtered_query_params": "&".join(S3_FILTER),
            "tag": ';etag="abc"',
            "application": "serving",
            "scope": "all_peers",
            "timeout": 90_000_000_000,  # a Go duration: nanoseconds
        },
        "scheduler_cluster_ids": [1, 3],
    }


def test_no_cluster_ids_lets_the_manager_pick_every_cluster() -> None:
    (plan,) = plan_jobs([_target()])
    assert "scheduler_cluster_ids" not in job_request(plan, JobOptions("", "all_peers"))


def test_one_job_per_filter_list_and_tag_and_each_url_once() -> None:
    a, b = _target(), _target(url=URL + "2", signed=SIGNED.replace("resnet", "resnet2"))
    other_version = _target(url=URL + "3", signed=SIGNED + "3", tag=';etag="def"')
    azure = Target("https://a.blob/c/k", "https://a.blob/c/k?sig=s", ("se", "sig"), "", "t")
    plans = plan_jobs([a, b, other_version, a, azure])
    assert plans == [
        Plan(S3_FILTER, ';etag="abc"', (a, b)),
        Plan(S3_FILTER, ';etag="def"', (other_version,)),
        Plan(("se", "sig"), "", (azure,)),
    ]


# -- the answer -----------------------------------------------------------------------------


def test_a_job_every_peer_completed_names_its_hosts() -> None:
    report = read_job(_job("SUCCESS", {"success_tasks": [_host("node-a"), _host("node-b")]}))
    assert (report.id, report.group, report.ended) == (7, "group_59b13d08", True)
    verdict = judge(report, Plan(S3_FILTER, "", (_target(),)))
    assert verdict.ok
    assert verdict.hosts == {URL: ("node-a (10.0.0.1)", "node-b (10.0.0.1)")}


def test_a_pending_job_has_not_ended() -> None:
    report = read_job(_job("PENDING"))
    assert not report.ended
    assert judge(report, Plan(S3_FILTER, "", (_target(),))).problems == ("has not ended: PENDING",)


def test_success_without_a_host_for_a_url_is_a_failure() -> None:
    """A single-seed-peer job whose download failed ends in SUCCESS with no host: the
    scheduler logs the error and answers with nothing."""
    second = _target(url=URL + "2", signed=SIGNED + "2")
    report = read_job(_job("SUCCESS", {"success_tasks": [_host("seed-1")]}))
    verdict = judge(report, Plan(S3_FILTER, "", (_target(), second)))
    assert verdict.problems == (f"{URL}2: no peer reports it downloaded",)


def test_a_host_that_failed_is_a_failure_with_its_reason_and_no_signature() -> None:
    reason = f"task 1 failed: backend error: GET {SIGNED} answered 403"
    report = read_job(
        _job(
            "SUCCESS",
            {
                "success_tasks": [_host("node-a")],
                "failure_tasks": [_host("node-b", description=reason)],
            },
        )
    )
    (problem,) = judge(report, Plan(S3_FILTER, "", (_target(),))).problems
    assert problem.startswith(f"node-b (10.0.0.1) failed {URL}: task 1 failed: backend error")
    assert SIGNATURE not in problem and "AKIDEXAMPLE" not in problem
    assert "answered 403" in problem


def test_a_presigned_input_url_never_shows_its_signature_in_a_problem() -> None:
    """A user may give a presigned URL (shim signs it again); its own signature is never
    printed, whether a host failed it or no host reports it."""
    given = URL + "?X-Amz-Signature=feedfacecafe0123&X-Amz-Credential=AKIDUSERGIVEN%2Fx"
    other = given.replace("resnet", "bert")
    targets = (_target(url=given), _target(url=other, signed=SIGNED + "2"))
    failed = {"failure_tasks": [_host("node-b", description="gone")]}
    report = read_job(_job("SUCCESS", failed))
    problems = judge(report, Plan(S3_FILTER, "", targets)).problems
    assert problems == (f"node-b (10.0.0.1) failed {redact_url(given)}: gone",)
    report = read_job(_job("SUCCESS", {"success_tasks": [_host("node-a")]}))
    (problem,) = judge(report, Plan(S3_FILTER, "", targets)).problems
    assert problem == f"{redact_url(other)}: no peer reports it downloaded"
    for text in (*problems, problem):
        assert "feedfacecafe0123" not in text and "AKIDUSERGIVEN" not in text


def test_a_failed_job_gives_the_scheduler_error() -> None:
    report = read_job(_job("FAILURE", error="cluster 1 scheduler 10.0.0.9 no available seed peer"))
    assert judge(report, Plan(S3_FILTER, "", (_target(),))).problems == (
        "failed: cluster 1 scheduler 10.0.0.9 no available seed peer",
    )


def test_a_job_the_manager_gave_up_on_says_so() -> None:
    """After about an hour of polling the manager marks a job failed without an error."""
    report = read_job(_job("FAILURE"))
    (problem,) = judge(report, Plan(S3_FILTER, "", (_target(),))).problems
    assert problem.startswith("failed: no reason given")


@pytest.mark.parametrize("answer", [[], "text", {"id": "seven", "state": "x"}, {"id": 1}])
def test_an_answer_that_is_no_job_is_a_manager_error(answer: Any) -> None:
    with pytest.raises(ManagerError, match="not a job"):
        read_job(answer)


@pytest.mark.origin
def test_a_redirect_is_not_followed_so_the_token_goes_nowhere_else(tmp_path: Path) -> None:
    """nginx answers 301 for a directory named without its final slash."""
    root = tmp_path / "root"
    (root / "oapi" / "v1" / "jobs" / "1").mkdir(parents=True)
    with start_nginx(root, tmp_path / "nginx") as nginx:
        client = ManagerClient(nginx.endpoint, SecretStr("pat-secret"))
        with pytest.raises(ManagerError) as info:
            client.job(1)
    # Read once nginx stopped: it logs a request after sending its answer.
    requests = (nginx.prefix / "access.log").read_text().splitlines()
    assert f"301 a redirect to {nginx.endpoint}/oapi/v1/jobs/1/, not followed" in str(info.value)
    assert len(requests) == 1 and '"GET /oapi/v1/jobs/1 HTTP/1.1" 301' in requests[0]


def test_the_client_never_shows_its_token() -> None:
    client = ManagerClient("http://127.0.0.1:9", SecretStr("pat-secret"))
    assert "pat-secret" not in repr(vars(client))
    with pytest.raises(ManagerError) as info:
        client.job(1)  # nothing listens on port 9
    assert "unreachable" in str(info.value)
    assert "pat-secret" not in str(info.value)
