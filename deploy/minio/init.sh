#!/bin/sh
# One-shot (compose service `minio-init`, image minio/mc): create longsong's bucket (private: no anonymous
# access) and a user limited to that bucket whose keys the workers use (AWS_ACCESS_KEY_ID /
# AWS_SECRET_ACCESS_KEY). The bucket name comes from LONGSONG_STORAGE=s3://bucket/prefix. Idempotent.
set -eu
: "${LONGSONG_STORAGE:?LONGSONG_STORAGE is not set}"
case "$LONGSONG_STORAGE" in
  s3://*) ;;
  *) echo "LONGSONG_STORAGE must be s3://bucket/prefix for the compose stack, got $LONGSONG_STORAGE" >&2; exit 1 ;;
esac
rest="${LONGSONG_STORAGE#s3://}"
bucket="${rest%%/*}"

mc alias set local "${MINIO_URL:-http://minio:9000}" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"
mc mb --ignore-existing "local/$bucket"
mc anonymous set none "local/$bucket"

if [ "$AWS_ACCESS_KEY_ID" != "$MINIO_ROOT_USER" ]; then
  policy=/tmp/longsong-policy.json
  cat > "$policy" <<JSON
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["s3:*"],
      "Resource": ["arn:aws:s3:::$bucket", "arn:aws:s3:::$bucket/*"]
    }
  ]
}
JSON
  mc admin user add local "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY"
  mc admin policy create local longsong-rw "$policy"
  mc admin policy attach local longsong-rw --user "$AWS_ACCESS_KEY_ID" || echo "policy already attached"
fi
echo "bucket $bucket is ready"
