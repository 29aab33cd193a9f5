"""A local AWS for development and the tests: moto's server over real HTTP, extended
in-process with what moto lacks and this project's flow needs (endpoints backed by real
`serve` processes, InvokeEndpoint routed by variant weights, UpdateEndpoint, and
CloudWatch alarms that evaluate their metrics), with fault injection for the tests of
failure paths: POST /_local_aws/faults makes chosen API calls fail or stall, and a
variant slow, failing or hung (faults.py).

Run it with `make local-aws` (python -m local_aws --port 4566, with tools on
PYTHONPATH) and point boto3 at it with AWS_ENDPOINT_URL=http://127.0.0.1:4566.
"""
