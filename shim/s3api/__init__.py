"""A read-only S3 API for SDK clients (``s3_api`` listener). Pure protocol logic here
(``request``: a request -> an operation; ``errors``: S3's XML errors; ``listing``: list
requests and answers), the I/O in ``serve``; object reads take the proxy's own path
(shim.decide -> sign -> identify -> cache / dfdaemon), so they share its cache entries and tasks.
"""
