"""``python -m pipeline.bundle {pack,inspect,verify} PATH``: tools for shipped bundles."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pipeline.bundle.format import Manifest
from pipeline.bundle.loader import open_bundle, verify_bundle
from pipeline.bundle.pack import pack_bundle
from pipeline.console import console, summary_table
from pipeline.errors import PipelineError


def inspect_rows(manifest: Manifest) -> list[tuple[str, str]]:
    """The manifest as label/value rows."""
    runtime = manifest.runtime
    applied = "applied" if runtime.get("applied") else f"NOT applied: {runtime.get('reason', '')}"
    verification = manifest.verification
    rows = [
        ("bundle id", manifest.bundle_id),
        ("created", manifest.created_at),
        ("model", f"{manifest.model_name} ({manifest.precision})"),
        ("backend", f"{manifest.backend} on {manifest.device}"),
        ("runtime", f"{runtime.get('policy', {}).get('name')} ({applied})"),
        ("engines", str(manifest.engine_count)),
        ("verification", "PASS" if verification.get("passed") else "FAIL"),
        ("weights", json.dumps(manifest.weights, sort_keys=True)),
        ("inputs", ", ".join(f"{i['name']} {i['shape']} {i['dtype']}" for i in manifest.inputs)),
        ("outputs", ", ".join(f"{o['shape']} {o['dtype']}" for o in manifest.outputs)),
    ]
    rows += [(f"env.{k}", v) for k, v in sorted(manifest.environment.items())]
    rows += [(f"file {f.path}", f"{f.size} bytes sha256:{f.sha256[:16]}") for f in manifest.files]
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.bundle", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    pack = commands.add_parser("pack", help="make PATH.tar.gz from a bundle directory")
    pack.add_argument("path")
    pack.add_argument("-o", "--output", help="archive path (default: next to the bundle)")
    for name, text in (("inspect", "print the manifest"), ("verify", "re-run the golden check here")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("path")
        if name == "inspect":
            sub.add_argument("--json", action="store_true", help="print manifest.json as is")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            print(pack_bundle(args.path, args.output))
        elif args.command == "inspect":
            _, manifest = open_bundle(args.path)
            if args.json:
                print(manifest.to_json(), end="")
            else:
                console.print(summary_table(inspect_rows(manifest), title=str(args.path)))
        else:
            report = verify_bundle(args.path)
            print(report.summary())
            return 0 if report.passed else 1
    except PipelineError as error:
        console.print(f"[red]error:[/] {error}")
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
