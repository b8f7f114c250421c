#!/usr/bin/env python3
"""Prints the alert rules of alerts.yaml as the `rules` of an Azure Managed
Prometheus rule group (Microsoft.AlertsManagement/prometheusRuleGroups), in
JSON: the same alert names, expressions, labels and annotations, `for` in
ISO 8601 (5m -> PT5M), and the rule's own Azure severity from its
`severity` label (critical 0, error 1, warning 2, info 3).

    python3 k8s/extras/monitoring/azure_rules.py > rules.json
    python3 k8s/extras/monitoring/azure_rules.py --action-group "$ACTION_GROUP_ID" > rules.json
    az alerts-management prometheus-rule-group create ... --interval PT1M --rules @rules.json

In Bicep: `rules: loadJsonContent('rules.json')`. Needs PyYAML (`pip install
pyyaml`; k8s/test.sh has it in .tools/venv).
"""

import argparse
import json
import os
import re
import sys

import yaml

SEVERITY = {"critical": 0, "error": 1, "warning": 2, "info": 3}


def iso_duration(text):
    """A Prometheus duration (1h30m, 5m, 30s, 1d) in ISO 8601 (PT1H30M, PT5M, PT30S, P1D)."""
    parts = re.fullmatch(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", str(text))
    if not parts or not any(parts.groups()):
        raise ValueError(f"not a duration this script can convert: {text!r}")
    days, hours, minutes, seconds = parts.groups()
    time = "".join(f"{v}{u}" for v, u in ((hours, "H"), (minutes, "M"), (seconds, "S")) if v)
    return "P" + (f"{days}D" if days else "") + ("T" + time if time else "")


def azure_rules(groups, action_group=None):
    rules = []
    for group in groups:
        for rule in group.get("rules", []):
            if "alert" not in rule:
                raise ValueError(f"only alert rules are converted, not {rule}")
            severity = rule.get("labels", {}).get("severity")
            if severity not in SEVERITY:
                raise ValueError(f"{rule['alert']}: severity label {severity!r} is not one of {sorted(SEVERITY)}")
            out = {
                "alert": rule["alert"],
                "expression": rule["expr"],
                "for": iso_duration(rule.get("for", "0s")),
                "severity": SEVERITY[severity],
                "labels": rule.get("labels", {}),
                "annotations": rule.get("annotations", {}),
                "enabled": True,
                "resolveConfiguration": {"autoResolved": True, "timeToResolve": "PT10M"},
            }
            if action_group:
                out["actions"] = [{"actionGroupId": action_group}]
            rules.append(out)
    return rules


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("alerts", nargs="?", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "alerts.yaml"))
    parser.add_argument("--action-group", help="resource id of an action group to notify")
    args = parser.parse_args(argv)
    with open(args.alerts) as f:
        groups = yaml.safe_load(f)["groups"]
    json.dump(azure_rules(groups, args.action_group), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
