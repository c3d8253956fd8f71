"""``just demo``: the whole journey on one machine, without an account anywhere.

Starts NATS, the four services (the web pages on http://127.0.0.1:8000), a real local
Bluesky PDS and two Mastodon-API test servers (alpha.test, beta.test); seeds a handful
of people who already moved (signed in, consented, gave their X archives); creates a
newcomer on each network whose X archive (offered on the upload page) matches them;
then prints how to sign in as that newcomer. Ctrl-C stops everything.

Everything lives under ``var/demo/`` and is started afresh each time.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.peers.mastodon.harness import MastodonFleet  # noqa: E402
from tests.peers.pds.harness import LocalPds  # noqa: E402
from tests.web.stack import Stack, newcomer_archive  # noqa: E402

BLUESKY_PEOPLE = ("camille", "yuki", "amina", "lukas", "sofia")
MASTODON_PEOPLE = (("alpha.test", "ann"), ("beta.test", "ben"), ("beta.test", "bea"))


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="the web pages' port")
    parser.add_argument("--dir", type=Path, default=ROOT / "var" / "demo")
    parser.add_argument(
        "--check", action="store_true", help="start, seed, print, then stop (no waiting)"
    )
    args = parser.parse_args()
    work: Path = args.dir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    archive = work / "newcomer-x-archive.zip"

    say("passerelle demo: starting a Bluesky PDS, Mastodon test servers, NATS and the services…")
    pds = LocalPds(data_dir=work / "pds").start()
    fleet = MastodonFleet(("alpha.test", "beta.test"), base_dir=work / "mastodon").start()
    stack = Stack(work / "stack", pds, fleet, ports={"ingest": args.port})
    try:
        stack.start(
            extra_env={
                "ingest": {
                    "PASSERELLE_DEMO_ARCHIVE": str(archive),
                    "PASSERELLE_OPERATOR_NAME": "passerelle demo (this computer)",
                }
            }
        )
        say("seeding people who already moved…")
        here = [
            stack.seed_bluesky(pds.create_account(name), n)
            for n, name in enumerate(BLUESKY_PEOPLE, 1)
        ]
        for domain, username in MASTODON_PEOPLE:
            fleet[domain].create_account(username)
        there = [
            stack.seed_mastodon(domain, username, n)
            for n, (domain, username) in enumerate(MASTODON_PEOPLE, 11)
        ]
        newcomer = pds.create_account("newcomer")
        fleet["alpha.test"].create_account("nora")  # password: "password"
        # The newcomer followed most of them on X, and some of them followed back.
        archive.write_bytes(
            newcomer_archive([*here[:4], *there[:2]], [here[1], here[4], there[1], there[2]])
        )

        url = stack.base_url
        say()
        say(f"  Open {url}")
        say()
        say("  Sign in with Bluesky as the newcomer:")
        say(f"      handle        {newcomer.handle}")
        say(f"      app password  {newcomer.app_password}")
        say("  or with Mastodon: server  alpha.test, then on the test server")
        say("      username nora, password password")
        say()
        say(f"  On the upload page, download the newcomer's X archive ({archive.name}),")
        say("  then give it back: matches appear in both directions; follow some, watch")
        say(f"  the progress page. Follows land on the local PDS ({pds.url}) and on")
        say(f"  alpha.test ({fleet['alpha.test'].url}).")
        say()
        say(f"  Logs: {work / 'stack'}/*.log     Ctrl-C stops everything.")
        if args.check:
            return
        stopping = False

        def stop(_signum: int, _frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        while not stopping:
            time.sleep(0.5)
    finally:
        say("stopping…")
        stack.stop()
        fleet.stop()
        pds.stop()


if __name__ == "__main__":
    main()
