"""A local Google Cloud KMS v1 emulator (gRPC + REST) for tests and the local stack.

Google ships no KMS emulator; this one speaks the real wire formats so the official
`google-cloud-kms` client can be pointed at it unchanged.
"""

PROJECT = "kms-broker-local"
LOCATION = "global"
