"""The ZIP evidence pack: manifest, events, CSV and SHA256SUMS, byte-identical for a run."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from datetime import UTC
from datetime import datetime

from app.models import RunRecord
from app.models import record_description

_ZIP_EPOCH = datetime(1980, 1, 1, tzinfo=UTC)


def snapshot_zip(record: RunRecord, events_json: bytes, events_csv: bytes) -> bytes:
    """Pack a run: every byte derives from the record, nothing from the moment of download.

    Entries are stored, not deflated: deflate's output may differ between zlib builds
    (zlib-ng, for one), and the pack must be byte-identical on every host.
    """
    contents = {"events.json": events_json, "events.csv": events_csv}
    manifest = {**record_description(record), "files": {name: _sha256(data) for name, data in contents.items()}}
    contents = {
        "manifest.json": json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8") + b"\n",
        **contents,
    }
    contents["SHA256SUMS"] = "".join(f"{_sha256(data)}  {name}\n" for name, data in contents.items()).encode()

    created = max(datetime.fromtimestamp(record.identity.created_at / 1000, UTC), _ZIP_EPOCH)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as pack:
        for name, data in contents.items():
            entry = zipfile.ZipInfo(name, date_time=created.timetuple()[:6])
            entry.create_system = 3  # unix, whatever host builds it
            entry.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
            pack.writestr(entry, data)
    return out.getvalue()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
