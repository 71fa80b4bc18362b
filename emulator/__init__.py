"""A local AWS Data Pipeline service that speaks the real wire protocol (JSON 1.1 over HTTP).

boto3 and the AWS CLI talk to it unchanged through ``endpoint_url``. It imports nothing
from ``bridge`` or ``workers``.
"""
