"""Hostile evidence packs, as an outside review built them: ZIPs that a streaming extractor reads
one way and the central directory another, and packs made to cost the check time, memory or its
stack. Each is refused in one line naming what is wrong; the service's own packs still pass."""

from __future__ import annotations

import base64
import bz2
import io
import json
import os
import struct
import subprocess
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import replace
from typing import Any

import pytest

from app import create_app
from app.engine.events import MAX_TRANSCRIPT_BYTES
from app.evidence.attestation import MAX_SIGNATURES
from app.evidence.attestation import MAX_STATEMENT_BYTES
from app.evidence.attestation import PACK_FILES
from app.evidence.attestation import PackRefused
from app.evidence.attestation import check_pack
from app.evidence.attestation import checksums
from app.evidence.attestation import envelope
from app.evidence.csv_export import events_csv
from app.evidence.strict_zip import MAX_FILE_BYTES
from app.evidence.strict_zip import MAX_PACK_BYTES
from app.models import canonical_json
from app.models import encode_events
from app.signing import SigningKey
from harness.fakes import FakeEngine
from harness.servers import require_binary
from tests.conftest import test_settings
from tests.evidence.test_attestation import done_run
from tests.evidence.test_attestation import files_of
from tests.evidence.test_attestation import pack_of

STORED, DEFLATED, BZIP2 = 0, 8, 12
SYMLINK = 0o120777
GIB = 1 << 30
GIB_OF_ZEROS_CRC = 0x5B64_C2B0  # zlib.crc32(bytes(GIB)): a bomb whose every check but its size holds


@dataclass(frozen=True, eq=False)  # compared by identity: the central directory finds each by it
class Entry:
    """A ZIP entry as a forger writes it, field by field; ``data`` as it lies in the archive."""

    name: bytes
    data: bytes
    size: int
    crc: int
    method: int = STORED
    flags: int = 0
    mode: int = 0o100644
    when: tuple[int, int] = (0, 0x21)  # DOS time and date
    local_name: bytes | None = None  # what the local header names, if not ``name``
    local_crc: int | None = None
    local_extra: bytes = b""


def entry(name: str, content: bytes, **fields: Any) -> Entry:
    return Entry(name.encode(), content, len(content), zlib.crc32(content), **fields)


def raw_zip(parts: Sequence[Entry | bytes], central: Sequence[Entry] | None = None, comment: bytes = b"") -> bytes:
    """Local entries (and raw bytes) back to back as given, then a central directory of ``central``
    (every entry given, by default) at the offsets they were written at, then the end record."""
    out, offsets = bytearray(), {}
    for part in parts:
        if isinstance(part, bytes):
            out += part
            continue
        offsets[part] = len(out)
        name = part.name if part.local_name is None else part.local_name
        crc = part.crc if part.local_crc is None else part.local_crc
        out += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, part.flags, part.method, *part.when, crc, len(part.data),
                           part.size, len(name), len(part.local_extra)) + name + part.local_extra + part.data
    listed = [part for part in parts if isinstance(part, Entry)] if central is None else central
    start = len(out)
    for part in listed:
        out += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 3 << 8 | 20, 20, part.flags, part.method, *part.when,
                           part.crc, len(part.data), part.size, len(part.name), 0, 0, 0, 0, part.mode << 16,
                           offsets[part]) + part.name
    out += struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(listed), len(listed), len(out) - start, start,
                       len(comment)) + comment
    return bytes(out)


def entries_of(pack: bytes) -> list[Entry]:
    """A genuine pack's entries, as they are (stored, each with its own time and date)."""
    archive = zipfile.ZipFile(io.BytesIO(pack))
    return [entry(info.filename, archive.read(info), when=struct.unpack_from("<2H", pack, info.header_offset + 10))
            for info in archive.infolist()]


def deflated(data: bytes) -> bytes:
    squeezer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return squeezer.compress(data) + squeezer.flush()


def deflated_zeros(mebibytes: int) -> bytes:
    """Raw deflate of that many MiB of zeros, made at once: one fully flushed block repeated."""
    squeezer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = squeezer.compress(bytes(1 << 20)) + squeezer.flush(zlib.Z_FULL_FLUSH)
    return block * mebibytes + b"\x03\x00"  # an empty final block ends the stream


def zipped(files: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def with_attestation(files: dict[str, bytes], attestation: bytes) -> dict[str, bytes]:
    """The pack's files with another attestation.json, SHA256SUMS made to agree."""
    files = {**files, "attestation.json": attestation}
    return {**files, "SHA256SUMS": checksums({name: files[name] for name in PACK_FILES[:-1]})}


def hostile_payload(signatures: int = 100, payload_bytes: int = 32 << 20) -> bytes:
    """attestation.json with a payload of zeros and bogus signatures, as the review built it."""
    document = {"payloadType": "application/vnd.in-toto+json",
                "payload": base64.b64encode(bytes(payload_bytes)).decode(),
                # Each with its scalar below the group order: checked in full, not turned away at a glance.
                "signatures": [{"keyid": f"k{n}", "sig": base64.b64encode(os.urandom(63) + b"\0").decode()}
                               for n in range(signatures)]}
    return json.dumps(document).encode()


def payload_pack(pack: bytes) -> bytes:
    """The review's 48 KB pack: a 32 MiB payload under 100 signatures, deflated, its size honest."""
    files = with_attestation(files_of(pack), hostile_payload())
    return zipped(files, zipfile.ZIP_DEFLATED)


def bomb_pack(pack: bytes) -> bytes:
    """The review's zip bomb: every file 1 GiB of zeros, deflated to 1 MB, its size honest."""
    return raw_zip([replace(genuine, data=deflated_zeros(1024), size=GIB, crc=GIB_OF_ZEROS_CRC, method=DEFLATED)
                    for genuine in entries_of(pack)])


def nested_pack(pack: bytes) -> bytes:
    """attestation.json of 100,000 nested brackets."""
    return zipped(with_attestation(files_of(pack), b"[" * 100_000 + b"]" * 100_000))


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def pack(key) -> bytes:
    client = create_app(test_settings(signing_key=key), engine=FakeEngine()).test_client()
    return pack_of(client, done_run(client))


def test_the_services_pack_rebuilt_entry_by_entry_is_the_same_bytes_and_passes(pack, key):
    assert raw_zip(entries_of(pack)) == pack  # so each forgery below differs from it only as it says
    assert check_pack(pack, [key.public]).key_id == key.key_id


def test_a_stream_extractor_takes_a_hidden_entry_from_a_pack_the_check_refuses(pack, key, tmp_path):
    bsdtar = require_binary("bsdtar")
    genuine = entries_of(pack)
    hidden = entry("events.json", b'[{"data":{"text":"what the auditor reads"},"type":"token"}]')
    forged = raw_zip([*genuine[:3], hidden, *genuine[3:]], central=genuine)
    assert files_of(forged) == files_of(pack)  # read by its central directory, it is the genuine pack

    for name, zip_bytes in (("genuine", pack), ("forged", forged)):
        (tmp_path / name).mkdir()
        subprocess.run([bsdtar, "-xf", "-", "-C", str(tmp_path / name)], input=zip_bytes, check=True)
    assert (tmp_path / "genuine" / "events.json").read_bytes() == files_of(pack)["events.json"]
    assert (tmp_path / "forged" / "events.json").read_bytes() == hidden.data

    hidden_bytes = 30 + len(hidden.name) + len(hidden.data)  # its local header, name and data
    with pytest.raises(PackRefused, match=f"^has {hidden_bytes} bytes between events\\.csv and attestation\\.json"
                                          " that its central directory does not list$"):
        check_pack(forged, [key.public])


def _layouts():
    """Forgeries of a genuine pack's layout, each with the reason it is refused."""
    def edited(name, **fields):
        return lambda entries, pack: raw_zip([replace(e, **fields) if e.name == name else e for e in entries])

    return {
        "bytes prepended": (lambda entries, pack: b"MZ" * 8 + pack,
                            r"^its central directory \(\d+ bytes at byte \d+\) does not end where its end record"
                            r" begins \(byte \d+\): bytes were prepended, inserted or cut$"),
        "bytes prepended, offsets moved": (lambda entries, pack: raw_zip([b"MZ" * 8, *entries]),
                                           r"^has 16 bytes before manifest\.json that its central directory does"
                                           r" not list$"),
        "bytes appended": (lambda entries, pack: pack + b"trailing",
                           r"^has 8 bytes after its end of central directory record$"),
        "a ZIP comment": (lambda entries, pack: raw_zip(entries, comment=b"looks fine"),
                          r"^has a ZIP comment, which no evidence pack has$"),
        "a gap between entries": (lambda entries, pack: raw_zip([*entries[:2], bytes(16), *entries[2:]]),
                                  r"^has 16 bytes between events\.json and events\.csv that its central directory"
                                  r" does not list$"),
        "bytes before the directory": (lambda entries, pack: raw_zip([*entries, b"PK\x03\x04"]),
                                       r"^has 4 bytes between SHA256SUMS and its central directory that"),
        "entries out of order": (lambda entries, pack: raw_zip(entries, central=[entries[1], entries[0],
                                                                                 *entries[2:]]),
                                 r"^has \d+ bytes before events\.json that its central directory does not list$"),
        "a local name not the central one": (edited(b"events.csv", local_name=b"evil.txt"),
                                             r"^events\.csv's local header names another file, 'evil\.txt'$"),
        "a local CRC not the central one": (edited(b"events.csv", local_crc=0),
                                            r"^events\.csv's local header and central directory entry differ"
                                            r" \(CRC-32\)$"),
        # Info-ZIP's Unicode path, which bsdtar takes for the file's name: it extracts events.csv as evil.txt.
        "a local Unicode path extra field": (edited(b"events.csv", local_extra=struct.pack(
            "<2HBI", 0x7075, 13, 1, zlib.crc32(b"events.csv")) + b"evil.txt"),
            r"^events\.csv's local header has an extra field, which no evidence pack has$"),
        "bzip2 (method 12)": (lambda entries, pack: raw_zip(
            [replace(e, data=bz2.compress(e.data), method=BZIP2) if e.name == b"events.csv" else e
             for e in entries]),
            r"^events\.csv is compressed with method 12; a pack's files are stored \(0\) or deflated \(8\)$"),
        "the encryption flag": (edited(b"events.csv", flags=0x0001), r"^events\.csv is encrypted$"),
        "a data descriptor": (edited(b"events.csv", flags=0x0008),
                              r"^events\.csv has its sizes in a data descriptor after its data"),
        "another flag": (edited(b"events.csv", flags=0x0020),
                         r"^events\.csv has general purpose flags 0x0020, which no evidence pack sets$"),
        "ZIP64": (lambda entries, pack: pack[:-6] + b"\xff\xff\xff\xff" + pack[-2:],  # the directory's offset
                  r"^uses ZIP64, which no evidence pack needs$"),
        "a symbolic link": (edited(b"events.csv", mode=SYMLINK),
                            r"^events\.csv is not a regular file \(mode 120777\)$"),
        "a stored size not its length": (lambda entries, pack: raw_zip(
            [replace(e, size=e.size + 1) if e.name == b"events.csv" else e for e in entries]),
            r"^events\.csv is stored, yet its compressed size and its size differ$"),
    }


@pytest.mark.parametrize(("forge", "reason"), _layouts().values(), ids=_layouts().keys())
def test_a_pack_that_is_not_exactly_its_entries_back_to_back_is_refused(pack, key, forge, reason):
    forged = forge(entries_of(pack), pack)
    with pytest.raises(PackRefused, match=reason):
        check_pack(forged, [key.public])


def test_a_pack_deflated_by_zipfile_passes(pack, key):
    assert check_pack(zipped(files_of(pack), zipfile.ZIP_DEFLATED), [key.public]).key_id == key.key_id


def _deflated_lies():
    return {
        "inflating to less than it says": (lambda e: replace(e, size=e.size + 1),
                                           r"^events\.csv inflates to \d+ bytes, not the \d+ its headers say$"),
        "inflating to more than it says": (lambda e: replace(e, size=e.size - 1),
                                           r"^events\.csv inflates to more than the \d+ bytes its headers say$"),
        "bytes after its deflate stream": (lambda e: replace(e, data=e.data + b"hidden"),
                                           r"^events\.csv's deflated data does not end where its compressed size"
                                           r" says$"),
        "its deflate stream cut short": (lambda e: replace(e, data=e.data[:-4]),
                                         r"^events\.csv's deflated data does not end where its compressed size"
                                         r" says$"),
        "damaged deflate data": (lambda e: replace(e, data=b"\xff" + e.data[1:]), r"^events\.csv is damaged \("),
        "another CRC-32": (lambda e: replace(e, crc=e.crc ^ 1), r"^events\.csv is damaged \(its CRC-32 differs\)$"),
    }


@pytest.mark.parametrize(("lie", "reason"), _deflated_lies().values(), ids=_deflated_lies().keys())
def test_a_deflated_entry_whose_headers_do_not_say_what_it_inflates_to_is_refused(pack, key, lie, reason):
    entries = [lie(replace(e, data=deflated(e.data), method=DEFLATED)) if e.name == b"events.csv" else e
               for e in entries_of(pack)]
    with pytest.raises(PackRefused, match=reason):
        check_pack(raw_zip(entries), [key.public])


def test_a_32_mib_payload_under_100_signatures_is_refused_before_it_is_inflated(pack, key):
    hostile = payload_pack(pack)
    assert len(hostile) < 64 * 1024
    with pytest.raises(PackRefused, match=r"^attestation\.json is \d+ bytes, more than an evidence pack's ever is"
                                          r" \(262144\)$"):
        check_pack(hostile, [key.public])
    # Its headers saying it is small, it is refused once it inflates past what they say.
    lying = [replace(e, data=deflated(hostile_payload()), size=1000, method=DEFLATED)
             if e.name == b"attestation.json" else e for e in entries_of(pack)]
    with pytest.raises(PackRefused, match=r"^attestation\.json inflates to more than the 1000 bytes its headers say$"):
        check_pack(raw_zip(lying), [key.public])


def test_more_signatures_than_a_handful_are_refused_before_any_is_tried(pack, key):
    files = with_attestation(files_of(pack), hostile_payload(signatures=MAX_SIGNATURES + 1, payload_bytes=10))
    with pytest.raises(PackRefused, match=r"^attestation\.json holds 9 signatures; an evidence pack has at most 8$"):
        check_pack(zipped(files), [key.public])


def test_a_payload_larger_than_any_statement_is_refused(pack, key):
    files = with_attestation(files_of(pack), envelope(bytes(MAX_STATEMENT_BYTES + 1), key))
    with pytest.raises(PackRefused, match=r"^attestation\.json's payload is 65537 bytes, more than a signed"
                                          r" statement ever is \(65536\)$"):
        check_pack(zipped(files), [key.public])


def test_a_zip_bomb_is_refused_by_its_sizes_or_as_it_inflates_past_them(pack, key):
    bomb = bomb_pack(pack)
    assert len(bomb) < 6_000_000
    with pytest.raises(PackRefused, match=r"^manifest\.json is 1073741824 bytes, more than an evidence pack's ever"
                                          r" is \(65536\)$"):
        check_pack(bomb, [key.public])
    # Its headers claiming the most events.json may be, it is refused a chunk past that.
    claimed = MAX_FILE_BYTES["events.json"]
    lying = [replace(e, data=deflated_zeros(1024), size=claimed, method=DEFLATED) if e.name == b"events.json" else e
             for e in entries_of(pack)]
    with pytest.raises(PackRefused, match=f"^events\\.json inflates to more than the {claimed} bytes its headers say$"):
        check_pack(raw_zip(lying), [key.public])


def test_json_nested_100000_deep_is_refused_in_one_line(pack, key):
    with pytest.raises(PackRefused, match=r"^attestation\.json is nested too deeply to be JSON the service wrote$"):
        check_pack(nested_pack(pack), [key.public])
    # A statement the key signed is parsed only once its signature holds; it is bounded all the same.
    files = with_attestation(files_of(pack), envelope(b"[" * 30_000 + b"]" * 30_000, key))
    with pytest.raises(PackRefused, match=r"^the signed statement is nested too deeply to be JSON the service wrote$"):
        check_pack(zipped(files), [key.public])


def test_the_bounds_hold_the_largest_transcript_and_its_csv():
    # app/evidence/transcripts.py reads a transcript back to at most this, the events and what is around them.
    assert MAX_FILE_BYTES["events.json"] == MAX_TRANSCRIPT_BYTES + 4096
    # The CSV grows most from a character that str() escapes and JSON does not: U+007F, 1 byte in
    # JSON, 4 more in the text column's ['\x7f'].
    data = canonical_json({"text": ["\x7f" * 4000], "tokenIndex": ["\U000e0001" * 100]})
    csv = events_csv([{"type": "token", "data": json.loads(data)}])
    ratio = len(csv) / len(encode_events([("token", data)]))
    assert 4.5 < ratio < 5
    assert MAX_FILE_BYTES["events.csv"] >= 5 * MAX_FILE_BYTES["events.json"]
    assert sum(MAX_FILE_BYTES.values()) < MAX_PACK_BYTES
