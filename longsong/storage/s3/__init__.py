"""S3 / MinIO object storage (the minio SDK) behind the `Storage` interface.

Selected by `LONGSONG_STORAGE=s3://bucket/prefix`. Endpoint and credentials come from the standard AWS
variables, so existing MinIO/S3 setups work unchanged:

    AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL)   http://minio:9000 -> no TLS; https://... or unset (AWS S3) -> TLS
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY     required (or AWS_WEB_IDENTITY_TOKEN_FILE for EKS IRSA roles)
    AWS_SESSION_TOKEN                            optional, temporary credentials
    AWS_REGION (or AWS_DEFAULT_REGION)           optional; found from the bucket when unset
    AWS_CA_BUNDLE                                optional CA file for a private TLS endpoint

longsong's own settings for this backend (parsed by `longsong.settings.Settings`):

    LONGSONG_LINK_EXPIRY          presigned link lifetime, "24h" (default), "7d", "3600s", "90m"; at most 7 days
    LONGSONG_LINK_ENDPOINT        endpoint people download from when it differs from the workers' one
                                  (e.g. http://localhost:9000 while workers use http://minio:9000)
    LONGSONG_SCRATCH_EXPIRY_DAYS  lifecycle rule: scratch objects under {prefix}work/ expire after N days
                                  (default 2; "off" disables) - covers songs that failed before cleanup
    LONGSONG_RETENTION_DAYS       lifecycle rule: finished tracks under {prefix}audio/ expire after N days
                                  (default off; 30 is a sensible production value)
    LONGSONG_STORAGE_RETRY_S      an outage this long is waited out: transient failures are retried with
                                  backoff (heartbeating the activity) until then (default 300)
    LONGSONG_STORAGE_TIMEOUT_S    connect and read timeout of one request (default 20)

Modules: `client` (S3Storage: construction, the Storage interface, integrity checks), `errors` (what a
failure means: StorageError / StorageUnavailable / FileNotFoundError, outages waited out), `lifecycle` (bucket
creation, lifecycle rules and the public-policy check at start), `names` (bucket, prefix, endpoint, content
type and metadata header rules).
"""

from longsong.storage.s3.client import S3Storage

__all__ = ["S3Storage"]
