#!/usr/bin/env python3
"""Writes deploy/k8s/prometheusrule.yaml, the Prometheus operator's copy of
deploy/prometheus/rules.yml, or with --check fails when that copy is out of date.

rules.yml stays the one source (promtool tests it); the operator wants the same groups inside
a PrometheusRule object, and kustomize cannot embed a file into an object's spec.
Needs PyYAML (in var/venv, with kubernetes-validate).
"""
import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE = ROOT / "deploy/prometheus/rules.yml"
TARGET = ROOT / "deploy/k8s/prometheusrule.yaml"

HEADER = """\
# Generated from deploy/prometheus/rules.yml by scripts/k8s-rules.py; do not edit.
# `make test` fails when the two differ. Regenerate: var/venv/bin/python3 scripts/k8s-rules.py
"""


class Dumper(yaml.SafeDumper):
    # rules.yml's anchors (&spool_quota_runbook, ...) are expanded: each rule stands alone.
    def ignore_aliases(self, data):
        return True


def literal_multiline(dumper, text):
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


Dumper.add_representer(str, literal_multiline)


def wanted():
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "clicktrail"},
        "spec": {"groups": yaml.safe_load(SOURCE.read_text())["groups"]},
    }


def main():
    if sys.argv[1:] == ["--check"]:
        # Compared as data, not text, so another PyYAML's formatting is no difference.
        if not TARGET.exists() or yaml.safe_load(TARGET.read_text()) != wanted():
            print(f"{TARGET.relative_to(ROOT)} is out of date with {SOURCE.relative_to(ROOT)}; "
                  "run: var/venv/bin/python3 scripts/k8s-rules.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(HEADER + yaml.dump(wanted(), Dumper=Dumper, sort_keys=False, width=4096,
                                         allow_unicode=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
