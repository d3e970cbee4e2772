"""File storage: S3 (aiobotocore) when AWS_S3_BUCKET is set, else a local folder at signed URLs."""
