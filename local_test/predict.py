"""Client for a running endpoint: POST /invocations with images, print the predictions.

Standard library only. Usage: predict.py IMAGE... [--url URL] [--attributes ATTRS]
The same request through SageMaker is boto3's sagemaker-runtime `invoke_endpoint`
(see docs/serve.md).
"""

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="PNG or JPEG files")
    parser.add_argument("--url", default="http://localhost:8080", help="server address")
    parser.add_argument("--attributes", default="", help="X-Amzn-SageMaker-Custom-Attributes, e.g. threshold=0.3")
    args = parser.parse_args()
    try:
        instances = [{"b64": base64.b64encode(open(path, "rb").read()).decode()} for path in args.images]
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if args.attributes:
        headers["X-Amzn-SageMaker-Custom-Attributes"] = args.attributes
    request = urllib.request.Request(
        args.url.rstrip("/") + "/invocations", data=json.dumps({"instances": instances}).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = json.load(response)["predictions"]
    except urllib.error.HTTPError as error:
        print(f"error: HTTP {error.code}: {error.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except urllib.error.URLError as error:
        print(f"error: cannot reach {args.url}: {error.reason}", file=sys.stderr)
        return 1
    width = max(len(path) for path in args.images)
    print(f"{'image':<{width}}  score   defective  area_px  bbox")
    for path, p in zip(args.images, predictions):
        print(f"{path:<{width}}  {p['score']:.4f}  {str(p['defective']):<9}  {p['defect_area_px']:>7}  {p['bbox']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
