"""The ZIP evidence pack: manifest, events, CSV, their signed attestation and SHA256SUMS,
byte-identical for a run and a signing key."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import UTC
from datetime import datetime

from app.evidence.attestation import ATTESTATION
from app.evidence.attestation import CHECKSUMS
from app.evidence.attestation import checksums
from app.evidence.attestation import envelope
from app.evidence.attestation import sha256_hex
from app.evidence.attestation import statement
from app.models import RunRecord
from app.models import record_description
from app.signing import SigningKey

_ZIP_EPOCH = datetime(1980, 1, 1, tzinfo=UTC)


def pack_files(record: RunRecord, events_json: bytes, events_csv: bytes, key: SigningKey) -> dict[str, bytes]:
    """The pack's files in its order; every byte derives from the record and the key, nothing
    from the moment of download."""
    manifest = {
        **record_description(record),
        "files": {"events.json": sha256_hex(events_json), "events.csv": sha256_hex(events_csv)},
    }
    files = {
        "manifest.json": json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8") + b"\n",
        "events.json": events_json,
        "events.csv": events_csv,
    }
    files[ATTESTATION] = envelope(statement(files, manifest), key)
    files[CHECKSUMS] = checksums(files)
    return files


def snapshot_zip(record: RunRecord, files: dict[str, bytes]) -> bytes:
    """Pack ``files`` (``pack_files``), dated by the run's creation.

    Entries are stored, not deflated: deflate's output may differ between zlib builds
    (zlib-ng, for one), and the pack must be byte-identical on every host.
    """
    created = max(datetime.fromtimestamp(record.identity.created_at / 1000, UTC), _ZIP_EPOCH)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as pack:
        for name, data in files.items():
            entry = zipfile.ZipInfo(name, date_time=created.timetuple()[:6])
            entry.create_system = 3  # unix, whatever host builds it
            entry.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
            pack.writestr(entry, data)
    return out.getvalue()
