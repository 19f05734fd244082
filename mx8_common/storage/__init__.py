"""Reading sample bytes: the object reader (folders, S3), the S3 client and lean GET path, and
the bounded fetch pipeline."""
