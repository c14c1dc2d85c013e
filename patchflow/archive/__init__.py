"""Patch archives (``patch-vX.Y.Z.tar.gz``): patchflow's own deterministic writer and checked reader.

**Format.** A POSIX tar stream (PAX format, UTF-8 names whatever the locale, field failure C07;
members sorted by path, mtime 0, owner ``0:0`` with empty names) compressed as ONE standard gzip
member: header without name or timestamp, the deflate data, CRC-32 and length. ``gzip -t``,
``tar -tzf`` and Python's ``tarfile`` (``r:gz`` and ``r|gz``) read it like any ``.tar.gz``.

Neither side uses ``tarfile``'s reader or writer for the data (only its header constants and, for
long or non-ASCII names, its PAX header encoder and parser): the writer compresses on every core
(``nox -s bench`` measures it against GNU ``tar -czf``), and extraction does its own checks, which
cover what ``tarfile``'s ``data`` filter does (CVE-2007-4559, C01) and more; that filter is not
used.

* :mod:`patchflow.archive.codec`: the deflate codec (ISA-L, else zlib), its levels and the tar
  constants both sides share;
* :mod:`patchflow.archive.writer`: :func:`~patchflow.archive.writer.build_archive`, one pass over
  the tree with parallel deterministic compression;
* :mod:`patchflow.archive.stream`: the decompressed byte stream, inflated by a read-ahead thread;
* :mod:`patchflow.archive.reader`: member headers parsed and checked as they arrive, listing and
  reading members (:func:`~patchflow.archive.reader.read_members`,
  :func:`~patchflow.archive.reader.read_member_bytes`, :func:`~patchflow.archive.reader.compare_members`);
* :mod:`patchflow.archive.extract`: :func:`~patchflow.archive.extract.extract_archive`, the one-pass
  checked extraction against the manifest.
"""
