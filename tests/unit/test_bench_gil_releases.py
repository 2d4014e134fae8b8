"""bench/gil_releases.py: the parser of `perf script` output that the bench's counts come from."""

from __future__ import annotations

from bench.gil_releases import callers

SAMPLE = """\
python3.11 12184 [001] 32239.901056: probe_libpython3:PyEval_SaveThread: (7ff59c04fcf0)
\t          24fcf0 PyEval_SaveThread+0x0 (/usr/lib/libpython3.11.so.1.0)
\t          2d0324 posix_do_stat+0x54 (inlined)
\t          2d05df os_stat_impl+0x12f (inlined)
\t          1a7331 cfunction_vectorcall_FASTCALL_KEYWORDS+0x51 (/usr/lib/libpython3.11.so.1.0)

python3.11 12184 [001] 32239.901070: probe_libpython3:PyEval_SaveThread: (7ff59c04fcf0)
\t          24fcf0 PyEval_SaveThread+0x0 (/usr/lib/libpython3.11.so.1.0)
\t          2d0324 posix_do_stat+0x54 (inlined)
\t          2d05df os_stat_impl+0x12f (inlined)

python3.11 12184 [000] 32239.901090: probe_libpython3:PyEval_SaveThread: (7ff59c04fcf0)
\t          24fcf0 PyEval_SaveThread+0x0 (/usr/lib/libpython3.11.so.1.0)
\t           9a1b2 fcntl_flock_impl+0x22 (/usr/lib/python3.11/lib-dynload/fcntl.so)
\t           9a2c3 fcntl_flock+0x33 (/usr/lib/python3.11/lib-dynload/fcntl.so)

python3.11 12250 [000] 32239.901100: probe_libpython3:PyEval_SaveThread: (7ff59c04fcf0)
\t          24fcf0 PyEval_SaveThread+0x0 (/usr/lib/libpython3.11.so.1.0)

python3.11 12184 [001] 32239.901200: probe_libpython3:PyEval_SaveThread: (7ff59c04fcf0)
\t          24fcf0 PyEval_SaveThread+0x0 (/usr/lib/libpython3.11.so.1.0)
"""


def test_counts_the_busiest_threads_releases_by_caller_and_the_others_in_one_number() -> None:
    counted, others = callers(SAMPLE.splitlines())
    assert counted == {"posix_do_stat/os_stat_impl": 2, "fcntl_flock_impl/fcntl_flock": 1,
                       "(stack not unwound)": 1}
    assert others == 1


def test_no_samples_is_no_counts() -> None:
    assert callers([]) == ({}, 0)
