"""Audit the locked dependencies for known vulnerabilities: `make audit` (CI runs it).

pip-audit checks every pin of constraints.txt (plus torch, which the Makefile installs on its
own) against PyPI's vulnerability data. The verdict:

- a vulnerability with a fixed version: exit 1, naming the package, the advisory and the fix;
- a vulnerability without a fix: reported, not failing (nothing to upgrade to);
- a pin that could not be looked up: reported; with --strict it fails too.

Where the package index answers only a project's latest release (a mirror without per-version
JSON, pip-audit then skips the pin as "not found"), the project's latest-release document is
used when its version is exactly the pin: PyPI attaches the same vulnerability list there.

Usage: python .ci/audit.py [--requirements constraints.txt] [--extra "torch==2.13.0"] [--strict]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

PYPI_JSON = "https://pypi.org/pypi/{name}/json"


@dataclass
class Finding:
    """One known vulnerability of one pinned package."""

    package: str
    version: str
    advisory: str
    fixed_in: list[str] = field(default_factory=list)

    def line(self) -> str:
        fix = f"fixed in {', '.join(self.fixed_in)}" if self.fixed_in else "no fix released"
        return f"{self.package}=={self.version}: {self.advisory} ({fix})"


def run_pip_audit(requirements: Path) -> list[dict]:
    """pip-audit's JSON report of `requirements` (pinned, no dependency resolution)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "audit.json"
        command = [sys.executable, "-m", "pip_audit", "-r", str(requirements), "--no-deps", "--disable-pip"]
        command += ["--progress-spinner", "off", "-f", "json", "-o", str(report)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if not report.exists():  # pip-audit itself failed (no network, bad file): fail closed
            sys.exit(f"pip-audit failed (exit {done.returncode}):\n{done.stderr.strip()}")
        return json.loads(report.read_text())["dependencies"]


def latest_release_vulns(name: str, version: str) -> list[Finding] | None:
    """Vulnerabilities from the project's latest-release JSON, or None if it is not `version`."""
    try:
        with urllib.request.urlopen(PYPI_JSON.format(name=name), timeout=30) as response:
            document = json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    if document.get("info", {}).get("version") != version:
        return None
    return [
        Finding(name, version, v.get("id", "?"), list(v.get("fixed_in") or []))
        for v in document.get("vulnerabilities") or []
        if not v.get("withdrawn")
    ]


def audit(dependencies: list[dict]) -> tuple[list[Finding], list[str], int]:
    """Findings, the pins that could not be audited, and how many were audited."""
    findings: list[Finding] = []
    skipped: list[tuple[str, str]] = []
    for dep in dependencies:
        name = dep["name"]
        if "skip_reason" in dep:
            skipped.append((name, dep.get("version") or dep["skip_reason"].rsplit("(", 1)[-1].rstrip(")")))
        else:
            findings += [
                Finding(name, dep["version"], v["id"], list(v.get("fix_versions") or [])) for v in dep["vulns"]
            ]
    with ThreadPoolExecutor(max_workers=16) as pool:  # one request per skipped pin
        fallbacks = list(pool.map(lambda pin: latest_release_vulns(*pin), skipped))
    unaudited = [
        f"{name}=={version}" for (name, version), found in zip(skipped, fallbacks, strict=True) if found is None
    ]
    for found in fallbacks:
        findings += found or []
    return findings, unaudited, len(dependencies) - len(unaudited)


def main(argv: list[str] | None = None) -> int:
    """Run the audit and print the verdict; the exit code is 1 on a fixable vulnerability."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requirements", type=Path, default=Path("constraints.txt"))
    parser.add_argument("--extra", action="append", default=[], help="Another pin, e.g. torch==2.13.0.")
    parser.add_argument("--strict", action="store_true", help="Also fail when a pin could not be audited.")
    args = parser.parse_args(argv)
    pins = [line for line in args.requirements.read_text().splitlines() if line.strip()]
    pins += [extra.split()[0] for extra in args.extra if extra.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text("\n".join(pins) + "\n")
        findings, unaudited, audited = audit(run_pip_audit(requirements))
    print(
        f"audit: {audited} of {audited + len(unaudited)} pinned packages audited; {len(findings)} known vulnerabilities"
    )
    for finding in findings:
        print(("  FIX AVAILABLE " if finding.fixed_in else "  no fix yet    ") + finding.line())
    if unaudited:
        print(f"  not audited (no vulnerability data for the pinned version): {', '.join(unaudited)}")
    return verdict(findings, unaudited, strict=args.strict)


def verdict(findings: list[Finding], unaudited: list[str], *, strict: bool = False) -> int:
    """The exit code: 1 when a finding has a fix (or, with `strict`, a pin was not audited)."""
    fixable = [f for f in findings if f.fixed_in]
    if fixable:
        print(f"audit: FAILED: {len(fixable)} vulnerabilities have a fix; upgrade those pins in constraints.txt")
        return 1
    if unaudited and strict:
        print("audit: FAILED (--strict): some pins could not be audited")
        return 1
    print("audit: passed (no vulnerability with a fix)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
