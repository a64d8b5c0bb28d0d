"""Starts the real gateway, on the repository's example tenants, against the bundled emulator.

This is the README's first command (`switchyard serve --emulator`) on a random port; the tests
then talk to it only through the official `openai` SDK.
"""
import os
import pathlib
import subprocess
import tempfile
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("SWITCHYARD_BIN", str(ROOT / "target" / "debug" / "switchyard"))


def _start(args, prefix):
    proc = subprocess.Popen(
        [BIN, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    found = threading.Event()
    addr = {}

    def read():
        for line in proc.stdout:
            if not found.is_set() and line.startswith(prefix):
                addr["base"] = line[len(prefix):].strip()
                found.set()

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(30):
        proc.kill()
        raise RuntimeError(f"switchyard did not print {prefix!r}; is {BIN} built?")
    return proc, addr["base"]


@pytest.fixture(scope="session")
def gateway():
    # The usage ledger in a folder of its own: a gateway started from the README in the same
    # checkout holds the default one (one gateway per ledger file).
    ledger = tempfile.mkdtemp(prefix="switchyard-sdk-ledger-")
    proc, base = _start(
        ["serve", "--tenants", "tenants", "--listen", "127.0.0.1:0", "--emulator", "127.0.0.1:0",
         "--ledger", f"sqlite://{ledger}/ledger.db"],
        "switchyard listening on ",
    )
    yield base
    proc.terminate()
    proc.wait(10)
