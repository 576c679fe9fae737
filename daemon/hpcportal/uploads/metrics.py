"""Prometheus metrics of the uploads area, on the app's own registry."""

from prometheus_client import Counter


class UploadMetrics:
    def __init__(self, registry):
        self.bytes_received = Counter(
            "hpcportal_upload_bytes_received", "Bytes written to partial files, by protocol",
            ["protocol"], registry=registry)
        self.started = Counter("hpcportal_uploads_started", "Uploads started, by protocol",
                               ["protocol"], registry=registry)
        self.completed = Counter("hpcportal_uploads_completed", "Uploads completed, by protocol",
                                 ["protocol"], registry=registry)
        self.failed = Counter(
            "hpcportal_uploads_failed",
            "Refused chunks and completions (chunk_size, chunk_checksum, file_checksum)",
            ["reason"], registry=registry)
        self.reread_bytes = Counter(
            "hpcportal_upload_complete_reread_bytes",
            "Bytes read back at completion to checksum a file (not hashed as they arrived)",
            registry=registry)
        self.cancelled = Counter("hpcportal_uploads_cancelled", "Uploads cancelled by their users",
                                 registry=registry)
        self.expired = Counter("hpcportal_uploads_expired", "Unfinished uploads removed after expiry",
                               registry=registry)
        self.retained_removed = Counter(
            "hpcportal_upload_files_retention_removed",
            "Finished files removed after uploads.retention_days", registry=registry)
