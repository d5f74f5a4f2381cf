#!/bin/sh
# One-shot init for the development CDN (the minio-init service, image minio/mc): the bucket, a
# read-only downloader and a read-write uploader limited to that bucket, and a cdn.yaml for the
# training service (CDN_CONFIG_FILE) in the cdn-config volume. Idempotent.
set -eu
mc alias set cdn http://minio:9000 "${MINIO_ROOT_USER}" "${MINIO_ROOT_PASSWORD}" >/dev/null
mc mb --ignore-existing "cdn/${CDN_BUCKET}"

cat > /tmp/downloader.json <<POLICY
{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::${CDN_BUCKET}/*"]},
  {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"], "Resource": ["arn:aws:s3:::${CDN_BUCKET}"]}]}
POLICY
cat > /tmp/uploader.json <<POLICY
{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                                 "s3:ListMultipartUploadParts"], "Resource": ["arn:aws:s3:::${CDN_BUCKET}/*"]},
  {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"],
   "Resource": ["arn:aws:s3:::${CDN_BUCKET}"]}]}
POLICY
mc admin policy create cdn azaion-downloader /tmp/downloader.json
mc admin policy create cdn azaion-uploader /tmp/uploader.json
mc admin user add cdn "${CDN_DOWNLOADER_ACCESS_KEY}" "${CDN_DOWNLOADER_SECRET_KEY}"
mc admin user add cdn "${CDN_UPLOADER_ACCESS_KEY}" "${CDN_UPLOADER_SECRET_KEY}"
mc admin policy attach cdn azaion-downloader --user "${CDN_DOWNLOADER_ACCESS_KEY}" 2>/dev/null || true
mc admin policy attach cdn azaion-uploader --user "${CDN_UPLOADER_ACCESS_KEY}" 2>/dev/null || true

umask 077
cat > /cdn-config/cdn.yaml <<CDN
host: http://minio:9000
bucket: ${CDN_BUCKET}
downloader_access_key: ${CDN_DOWNLOADER_ACCESS_KEY}
downloader_access_secret: ${CDN_DOWNLOADER_SECRET_KEY}
uploader_access_key: ${CDN_UPLOADER_ACCESS_KEY}
uploader_access_secret: ${CDN_UPLOADER_SECRET_KEY}
CDN
chown "${APP_UID:-1000}" /cdn-config/cdn.yaml  # readable by the training service's user only
echo "minio-init: bucket ${CDN_BUCKET}, downloader and uploader users ready"
