"""An evidence pack read as its entries and nothing else, back to back, so that what the check
reads is what any extractor gets: one reading the central directory (Python's zipfile) and one
reading local headers in order from a stream (``bsdtar -xf -``) alike. Every size is bounded
before it is read, and again as it inflates. Imports nothing of the service."""

from __future__ import annotations

import hashlib
import stat
import struct
import zlib
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass

ATTESTATION = "attestation.json"
CHECKSUMS = "SHA256SUMS"
SUBJECTS = ("manifest.json", "events.json", "events.csv")  # the signed files, in the pack's order
PACK_FILES = (*SUBJECTS, ATTESTATION, CHECKSUMS)

# Bounds far above any pack the service makes and far below what costs a checker seconds or
# gigabytes. A transcript is never read back past MAX_TRANSCRIPT_BYTES (app/engine/events.py) and
# 4096 bytes around it (app/evidence/transcripts.py); written out, not imported, so that the check imports
# nothing of the service (a test holds them equal).
_TRANSCRIPT_BYTES = 32 * 1024 * 1024 + 4096
MAX_FILE_BYTES = {
    # Ids, hashes, and the engine's name and version (128 characters each from a remote engine):
    # under 2 KiB.
    "manifest.json": 64 * 1024,
    "events.json": _TRANSCRIPT_BYTES,
    # Each event's data again, and its text as Python's str() writes it: up to 5 times the JSON
    # (U+007F is one byte in JSON, four in str()'s \x7f, and one more in the data column).
    "events.csv": 6 * _TRANSCRIPT_BYTES,
    # The statement in base64 (4/3 of it) and a signature or a few, about 130 bytes each.
    ATTESTATION: 256 * 1024,
    CHECKSUMS: 1024,  # five lines of a digest and a name
}
# Stored or deflated, a file takes at most its bound in a pack (deflate only grows what does not
# compress, and these files are text); a pack is those and their headers. Past this, a file is no
# evidence pack: for a caller deciding how much of one to read.
MAX_PACK_BYTES = sum(MAX_FILE_BYTES.values()) + 4096

# The ZIP records (APPNOTE.TXT 4.3.7, 4.3.12, 4.3.16), little-endian, after their signatures.
_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # version needed, flags, method, time, date, CRC-32, sizes, name, extra
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")  # made by, the local fields, comment, disk, attributes, offset
_END = struct.Struct("<4sHHHHIIH")  # disks, entries (this disk, all), directory size and offset, comment
_LOCAL_SIGNATURE, _CENTRAL_SIGNATURE, _END_SIGNATURE = b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06"
_STORED, _DEFLATED = 0, 8
# A data descriptor puts an entry's sizes after its data, where a streaming extractor has to guess
# where a stored entry ends. Refused: the service writes its packs whole (snapshot.py, to a
# seekable buffer), so its local headers hold their sizes.
_ENCRYPTED, _DATA_DESCRIPTOR, _UTF8_NAME = 0x0001, 0x0008, 0x0800
_DEFLATE_LEVEL = 0x0006  # bits 1 and 2: which level deflate used, for information only
# A size or offset of this value says "see the ZIP64 record". Refused: no file's bound nears
# 4 GiB nor a pack's five entries 65535, so a pack never needs ZIP64 (zipfile writes it only past
# 2 GiB), and one that has it has been made by something else.
_ZIP64 = 0xFFFF_FFFF
_UNIX = 3
_CHUNK = 1024 * 1024  # inflated at a time: what a deflated file costs in memory beyond the pack
# The files the check reads; of the others it needs only their digests, taken as they inflate.
_READ = ("manifest.json", ATTESTATION, CHECKSUMS)


class PackRefused(Exception):
    """The pack is not genuine evidence signed by one of the keys; the message says why."""


@dataclass(frozen=True)
class _Entry:
    """A file as the central directory lists it: what its local header must repeat, and where."""

    name: str
    raw_name: bytes
    flags: int
    method: int
    crc: int
    compressed: int
    size: int
    offset: int
    extra: int  # the lengths of its extra field and comment, its disk
    comment: int
    disk: int
    mode: int  # its unix type and permissions (0 when made elsewhere)


def pack_files_read(pack: bytes) -> tuple[dict[str, str], dict[str, bytes]]:
    """Every file's SHA-256, and the bytes of those the check reads, once the pack is found to be
    exactly its entries, back to back, then its central directory and its end record."""
    if len(pack) > MAX_PACK_BYTES:
        raise PackRefused(f"is {len(pack)} bytes, more than any evidence pack ({MAX_PACK_BYTES})")
    directory, entries = _central_directory(pack)
    names = [entry.name for entry in entries]
    if len(set(names)) != len(names):
        raise PackRefused("holds a file name twice")
    if missing := [name for name in PACK_FILES if name not in names]:
        raise PackRefused(f"{', '.join(missing)} missing")
    if extra := [name for name in names if name not in PACK_FILES]:
        raise PackRefused(f"holds files an evidence pack does not: {', '.join(shown(name) for name in extra[:5])}")
    for entry in entries:
        _check_entry(entry)
    _check_layout(pack, entries, directory)
    digests, files = {}, {}
    for entry in entries:
        digests[entry.name], data = _member(pack, entry, keep=entry.name in _READ)
        if entry.name in _READ:
            files[entry.name] = data
    return digests, files


def _central_directory(pack: bytes) -> tuple[int, list[_Entry]]:
    """Where the central directory starts, and its entries; it must end where the end record,
    the pack's last 22 bytes, begins."""
    end = len(pack) - _END.size
    if end < 0 or pack[end:end + 4] != _END_SIGNATURE:
        raise PackRefused(_no_end_record(pack))
    _, disk, directory_disk, listed_here, listed, size, start, comment = _END.unpack_from(pack, end)
    if comment:
        raise PackRefused("its end of central directory record is damaged (a comment past the end)")
    if _ZIP64 in (size, start) or 0xFFFF in (listed_here, listed):
        raise PackRefused("uses ZIP64, which no evidence pack needs")
    if disk or directory_disk or listed_here != listed:
        raise PackRefused("spans several disks")
    if start + size != end:
        raise PackRefused(f"its central directory ({size} bytes at byte {start}) does not end where its end record"
                          f" begins (byte {end}): bytes were prepended, inserted or cut")
    entries = []
    position = start
    for _ in range(listed):
        if position + _CENTRAL.size > end:
            raise PackRefused("its central directory is damaged (cut short)")
        (signature, made_by, _, flags, method, _, _, crc, compressed, file_size, name_length, extra_length,
         comment_length, disk_start, _, attributes, offset) = _CENTRAL.unpack_from(pack, position)
        if signature != _CENTRAL_SIGNATURE:
            raise PackRefused("its central directory is damaged (an entry has no signature)")
        raw_name = pack[position + _CENTRAL.size:position + _CENTRAL.size + name_length]
        name = raw_name.decode("utf-8" if flags & _UTF8_NAME else "cp437", "replace")
        entries.append(_Entry(name, raw_name, flags, method, crc, compressed, file_size, offset, extra_length,
                              comment_length, disk_start, attributes >> 16 if made_by >> 8 == _UNIX else 0))
        position += _CENTRAL.size + name_length + extra_length + comment_length
    if position != end:
        raise PackRefused(f"its central directory is damaged (it does not hold exactly its {listed} entries)")
    return start, entries


def _no_end_record(pack: bytes) -> str:
    """Why the pack does not end in an end of central directory record."""
    found = pack.rfind(_END_SIGNATURE)
    if found < 0 or len(pack) - found < _END.size:
        return "not a ZIP file (no end of central directory record)"
    after = len(pack) - found - _END.size
    if _END.unpack_from(pack, found)[-1] == after:
        return "has a ZIP comment, which no evidence pack has"
    return f"has {after} bytes after its end of central directory record"


def _check_entry(entry: _Entry) -> None:
    """An entry as the service writes one: a regular file, stored or deflated, with nothing an
    extractor could read another way (an extra field may rename a file: Info-ZIP's Unicode path)."""
    name = entry.name
    if entry.flags & _ENCRYPTED:
        raise PackRefused(f"{name} is encrypted")
    if entry.flags & _DATA_DESCRIPTOR:
        raise PackRefused(f"{name} has its sizes in a data descriptor after its data, not in its header")
    if entry.method not in (_STORED, _DEFLATED):
        raise PackRefused(f"{name} is compressed with method {entry.method}; a pack's files are stored (0) or"
                          " deflated (8)")
    if entry.flags & ~(_UTF8_NAME | (_DEFLATE_LEVEL if entry.method == _DEFLATED else 0)):
        raise PackRefused(f"{name} has general purpose flags {entry.flags:#06x}, which no evidence pack sets")
    if _ZIP64 in (entry.compressed, entry.size, entry.offset):
        raise PackRefused("uses ZIP64, which no evidence pack needs")
    if entry.extra or entry.comment or entry.disk:
        raise PackRefused(f"{name} has an extra field, a comment or a disk in the central directory, which no"
                          " evidence pack has")
    if stat.S_IFMT(entry.mode) not in (0, stat.S_IFREG):  # 0: permissions alone (zipfile's own default)
        raise PackRefused(f"{name} is not a regular file (mode {entry.mode:o})")
    limit = MAX_FILE_BYTES[name]
    if entry.size > limit or entry.compressed > limit:
        raise PackRefused(f"{name} is {max(entry.size, entry.compressed)} bytes, more than an evidence pack's"
                          f" ever is ({limit})")
    if entry.method == _STORED and entry.compressed != entry.size:
        raise PackRefused(f"{name} is stored, yet its compressed size and its size differ")


def _check_layout(pack: bytes, entries: Sequence[_Entry], directory: int) -> None:
    """Each entry's local header where the entry before ends (the first at byte 0), repeating its
    central directory entry, and the central directory where the last entry ends."""
    position = 0
    previous: _Entry | None = None
    for entry in entries:
        if entry.offset != position:
            raise PackRefused(_misplaced(entry.offset - position, previous, entry.name))
        if position + _LOCAL.size > directory or pack[position:position + 4] != _LOCAL_SIGNATURE:
            raise PackRefused(f"{entry.name} has no local header where its central directory entry says")
        _, _, flags, method, _, _, crc, compressed, size, name_length, extra_length = _LOCAL.unpack_from(pack, position)
        local_name = pack[position + _LOCAL.size:position + _LOCAL.size + name_length]
        if local_name != entry.raw_name:
            raise PackRefused(f"{entry.name}'s local header names another file,"
                              f" {shown(local_name.decode('utf-8', 'replace'))}")
        differing = [field for field, local, central in (
            ("flags", flags, entry.flags), ("method", method, entry.method), ("CRC-32", crc, entry.crc),
            ("compressed size", compressed, entry.compressed), ("size", size, entry.size)) if local != central]
        if differing:
            raise PackRefused(f"{entry.name}'s local header and central directory entry differ"
                              f" ({', '.join(differing)})")
        if extra_length:
            raise PackRefused(f"{entry.name}'s local header has an extra field, which no evidence pack has")
        position += _LOCAL.size + name_length + entry.compressed
        previous = entry
    if position != directory:
        raise PackRefused(_misplaced(directory - position, previous, "its central directory"))


def _misplaced(gap: int, previous: _Entry | None, what: str) -> str:
    """Why ``what`` does not start where the entry before it ends."""
    if gap < 0:
        inside = previous.name if previous else "nothing"
        return f"{what} starts inside {inside}: its entries overlap or are out of order"
    where = f"before {what}" if previous is None else f"between {previous.name} and {what}"
    return f"has {gap} bytes {where} that its central directory does not list"


def _member(pack: bytes, entry: _Entry, keep: bool) -> tuple[str, bytes]:
    """The file's SHA-256, and its bytes if ``keep``; its CRC-32 and size checked as it inflates,
    so that only the files kept are held, not the others."""
    start = entry.offset + _LOCAL.size + len(entry.raw_name)
    stored = memoryview(pack)[start:start + entry.compressed]
    digest, crc, size, kept = hashlib.sha256(), 0, 0, bytearray()
    for chunk in _inflated(stored, entry) if entry.method == _DEFLATED else (stored,):
        digest.update(chunk)
        crc = zlib.crc32(chunk, crc)
        size += len(chunk)
        if keep:
            kept += chunk
    if size != entry.size:
        raise PackRefused(f"{entry.name} inflates to {size} bytes, not the {entry.size} its headers say")
    if crc != entry.crc:
        raise PackRefused(f"{entry.name} is damaged (its CRC-32 differs)")
    return digest.hexdigest(), bytes(kept)


def _inflated(deflated: memoryview, entry: _Entry) -> Iterator[bytes]:
    """``deflated`` inflated a chunk at a time, never past the size its headers say (they may lie),
    and ending exactly where its compressed size does."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, as ZIP holds it
    size, left = 0, len(deflated)
    try:
        for start in range(0, len(deflated), _CHUNK):
            data: bytes | memoryview = deflated[start:start + _CHUNK]
            while data and not inflater.eof:
                chunk = inflater.decompress(data, _CHUNK)
                size += len(chunk)
                if size > entry.size:
                    raise PackRefused(f"{entry.name} inflates to more than the {entry.size} bytes its headers say")
                yield chunk
                data = inflater.unconsumed_tail
            left -= min(_CHUNK, len(deflated) - start)
            if inflater.eof:
                break
    except zlib.error as err:
        raise PackRefused(f"{entry.name} is damaged ({err})") from None
    if not inflater.eof or left + len(inflater.unused_data):
        raise PackRefused(f"{entry.name}'s deflated data does not end where its compressed size says")


def shown(text: str) -> str:
    return repr(text[:80])
