"""EvidenceService: a done run's transcript as the evidence clients take away, and its signing keys."""

from __future__ import annotations

import io
import zipfile

from app.evidence.attestation import ATTESTATION
from app.evidence.csv_export import events_csv
from app.evidence.keys import EvidenceKeys
from app.evidence.snapshot import pack_files
from app.evidence.snapshot import snapshot_zip
from app.evidence.transcripts import TranscriptCache
from app.models import RunRecord
from app.signing import PublicKey
from app.signing import SigningKey


class EvidenceService:
    """The /events JSON body, the CSV, the signed ZIP pack and its attestation of a done run (each
    made once per process and kept in the transcript cache), and the keys that sign and check
    them. It reads no registry: the record comes from the ``RunService``."""

    def __init__(self, transcripts: TranscriptCache, keys: EvidenceKeys) -> None:
        self._transcripts = transcripts
        self._keys = keys

    def events_body(self, record: RunRecord, gzip_ok: bool) -> bytes:
        """A done run's /events JSON body: gzip-compressed as stored when the client takes that, else plain."""
        return record.body_gzip if gzip_ok else self._transcripts.body(record)

    def export_csv(self, record: RunRecord) -> bytes:
        """A done run's transcript as spreadsheet-safe CSV."""
        return self._transcripts.representation(record, "csv", lambda: events_csv(self._transcripts.events(record)))

    def snapshot(self, record: RunRecord, key: SigningKey) -> bytes:
        """A done run's ZIP evidence pack; the same bytes every time for the same run and ``key``."""
        return self._transcripts.representation(record, f"zip {key.key_id}", lambda: snapshot_zip(
            record, pack_files(record, self._transcripts.events_json(record), self.export_csv(record), key)
        ))

    def attestation(self, record: RunRecord, key: SigningKey) -> bytes:
        """A done run's signed attestation: the pack's attestation.json, read from the pack (made once)."""
        return self._transcripts.representation(record, f"attestation {key.key_id}", lambda: zipfile.ZipFile(
            io.BytesIO(self.snapshot(record, key))).read(ATTESTATION))

    def signing_key(self) -> SigningKey:
        """The key evidence is signed with (the ETag of a signed representation names it)."""
        return self._keys.current()

    def public_keys(self) -> list[PublicKey]:
        return self._keys.public_keys()

    def announce_signing_key(self) -> None:
        self._keys.announce()
