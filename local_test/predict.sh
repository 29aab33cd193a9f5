#!/usr/bin/env bash
# Post images to a running endpoint (local_test/serve_local.sh) and print its predictions.
#   local_test/predict.sh IMAGE... [--url URL] [--attributes 'threshold=0.3']
# All images travel in one application/json request, so the server scores them in one
# forward pass. URL defaults to http://localhost:8080. Needs only python3.
exec python3 "$(dirname "$0")/predict.py" "$@"
