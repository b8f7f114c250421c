#!/usr/bin/env python3
"""Assertions on the rendered Kubernetes manifests.

Usage: test_manifests.py BASE.yaml EXTRAS.yaml SETUP.sh DOCKERFILE STATIC_TEST.sh
where BASE.yaml and EXTRAS.yaml are `kubectl kustomize k8s/` and
`kubectl kustomize k8s/extras/`. Prints one "ok - ..." or "not ok - ..."
line per check (k8s/test.sh counts them) and exits 1 if any failed.
"""

import os
import re
import sys

import yaml

RESULTS = []


def check(name, condition, detail=""):
    RESULTS.append(bool(condition))
    if condition:
        print(f"ok - manifests: {name}")
    else:
        print(f"not ok - manifests: {name}" + (f"\n    {detail}" if detail else ""))


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def by_kind(docs):
    out = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def probe_target(probe, ports):
    get = (probe or {}).get("httpGet") or {}
    port = get.get("port")
    return get.get("path"), ports.get(port, port)


def main(base_path, extras_path, setup_path, dockerfile_path, static_test_path):
    base, extras = load(base_path), load(extras_path)
    kinds = by_kind(base)
    check("k8s/ renders exactly a ServiceAccount, a Deployment and a Service",
          sorted(kinds) == ["Deployment", "Service", "ServiceAccount"] and all(len(v) == 1 for v in kinds.values()),
          f"got {sorted((d['kind'], d['metadata']['name']) for d in base)}")
    sa, dep, svc = kinds["ServiceAccount"][0], kinds["Deployment"][0], kinds["Service"][0]
    namespaces = {d["metadata"].get("namespace") for d in base + extras}
    check("every object is in namespace default", namespaces == {"default"}, f"namespaces: {namespaces}")

    check("ServiceAccount is ai-service-account", sa["metadata"]["name"] == "ai-service-account")
    annotation = (sa["metadata"].get("annotations") or {}).get("azure.workload.identity/client-id", "")
    check("ServiceAccount carries a client-id annotation shaped like a GUID",
          re.fullmatch(r"[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}", annotation), f"annotation: {annotation!r}")

    tpl = dep["spec"]["template"]
    labels = tpl["metadata"].get("labels", {})
    pod = tpl["spec"]
    check("Deployment ai-service is labelled app=ai-service",
          dep["metadata"]["name"] == "ai-service" and dep["metadata"].get("labels", {}).get("app") == "ai-service")
    check('pod carries the label azure.workload.identity/use: "true" (a string)',
          labels.get("azure.workload.identity/use") == "true", f"labels: {labels}")
    check("Deployment selector matches the pod labels",
          all(labels.get(k) == v for k, v in dep["spec"]["selector"]["matchLabels"].items()) and labels.get("app") == "ai-service")
    check("pod runs as the ServiceAccount", pod.get("serviceAccountName") == sa["metadata"]["name"],
          f"serviceAccountName: {pod.get('serviceAccountName')}")
    check("automountServiceAccountToken is left to its default (the webhook projects its own token)",
          "automountServiceAccountToken" not in pod)
    check("no replicas in the base, so the optional HPA owns the count", "replicas" not in dep["spec"])

    containers = pod["containers"]
    check("the pod has one container", len(containers) == 1)
    c = containers[0]
    env = {e["name"]: e for e in c.get("env", [])}
    values = {k: e.get("value") for k, e in env.items()}
    check("the seed's four environment variables are set",
          values.get("USE_AZURE_OPENAI") == "True" and values.get("USE_AZURE_AD") == "True"
          and values.get("AZURE_OPENAI_DEPLOYMENT_NAME") and values.get("AZURE_OPENAI_ENDPOINT", "").startswith("https://"),
          f"env: {values}")
    check("logs are JSON (LOG_FORMAT=json)", values.get("LOG_FORMAT") == "json")
    secretish = [n for n in env if re.search(r"KEY|SECRET|PASSWORD|TOKEN", n, re.I)]
    check("no environment variable is named like a key, secret, password or token", not secretish, f"found {secretish}")
    check("nothing is loaded from a Secret (no envFrom, no secretKeyRef)",
          "envFrom" not in c and not any("secretKeyRef" in (e.get("valueFrom") or {}) for e in env.values()))
    check("image is this repository's ai-service in a registry to fill in (setup.sh builds and sets it)",
          c["image"] == "YOUR-REGISTRY.azurecr.io/ai-service:YOUR-TAG", c["image"])
    k8s_dir = os.path.dirname(os.path.abspath(setup_path))
    sources = [os.path.join(d, f) for d in (k8s_dir, os.path.join(k8s_dir, "extras"))
               for f in sorted(os.listdir(d)) if f.endswith(".yaml")]
    naming = [f for f in sources if "ghcr.io/azure-samples/aks-store-demo/ai-service" in open(f).read()]
    check("no manifest names the Python original's image", len(sources) >= 8 and not naming, naming)

    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    check("container port 5001 is named http", ports.get("http") == 5001, f"ports: {ports}")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = c.get(kind)
        check(f"{kind} is an HTTP GET of /health on port 5001", probe_target(probe, ports) == ("/health", 5001),
              f"{kind}: {probe}")
        check(f"{kind} tolerates a slow pod (timeoutSeconds >= 2, failureThreshold >= 3)",
              probe and probe.get("timeoutSeconds", 1) >= 2 and probe.get("failureThreshold", 3) >= 3, f"{kind}: {probe}")
    check("resources are the seed's: requests cpu 20m / memory 50Mi, limits cpu 50m / memory 128Mi",
          c.get("resources") == {"requests": {"cpu": "20m", "memory": "50Mi"}, "limits": {"cpu": "50m", "memory": "128Mi"}},
          f"resources: {c.get('resources')}")
    check("terminationGracePeriodSeconds covers a 240 s image request",
          pod.get("terminationGracePeriodSeconds", 30) >= 240, pod.get("terminationGracePeriodSeconds"))

    # The "restricted" Pod Security Standard, field by field.
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    check("restricted: runAsNonRoot, runAsUser 65532, runAsGroup 65532",
          psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 65532 and psc.get("runAsGroup") == 65532, psc)
    check("restricted: seccompProfile RuntimeDefault on the pod",
          psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", psc)
    check("restricted: allowPrivilegeEscalation false, capabilities drop ALL, none added",
          csc.get("allowPrivilegeEscalation") is False and csc.get("capabilities", {}).get("drop") == ["ALL"]
          and not csc.get("capabilities", {}).get("add"), csc)
    check("restricted: read-only root filesystem, not privileged",
          csc.get("readOnlyRootFilesystem") is True and not csc.get("privileged"), csc)
    check("restricted: no host namespaces, host ports or hostPath volumes",
          not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
          and not any(p.get("hostPort") for p in c.get("ports", []))
          and not any("hostPath" in v for v in pod.get("volumes", [])))

    sports = svc["spec"]["ports"]
    check("Service ai-service is a ClusterIP on port 5001 -> 5001",
          svc["metadata"]["name"] == "ai-service" and svc["spec"].get("type", "ClusterIP") == "ClusterIP"
          and len(sports) == 1 and sports[0]["port"] == 5001 and ports.get(sports[0]["targetPort"], sports[0]["targetPort"]) == 5001,
          f"ports: {sports}")
    check("Service selects the pod", all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()),
          f"selector: {svc['spec']['selector']}")

    ek = by_kind(extras)
    hpa = (ek.get("HorizontalPodAutoscaler") or [{}])[0]
    pdb = (ek.get("PodDisruptionBudget") or [{}])[0]
    check("extras: an autoscaling/v2 HPA scales Deployment ai-service from 2 to 5 on CPU",
          hpa.get("apiVersion") == "autoscaling/v2"
          and hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ai-service"}
          and hpa["spec"]["minReplicas"] == 2 and hpa["spec"]["maxReplicas"] == 5
          and [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"], hpa)
    check("extras: a policy/v1 PDB keeps 1 ai-service pod available",
          pdb.get("apiVersion") == "policy/v1" and pdb["spec"].get("minAvailable") == 1
          and all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items()), pdb)

    nps = ek.get("NetworkPolicy") or []
    np = nps[0] if nps else {"spec": {}}
    nspec = np["spec"]
    check("extras: one networking.k8s.io/v1 NetworkPolicy selects the ai-service pods, for ingress and egress",
          len(nps) == 1 and np.get("apiVersion") == "networking.k8s.io/v1"
          and nspec.get("podSelector", {}).get("matchLabels") == {"app": "ai-service"} and labels.get("app") == "ai-service"
          and sorted(nspec.get("policyTypes", [])) == ["Egress", "Ingress"], np)
    ingress = nspec.get("ingress", [])
    check("extras: ingress is port 5001 (the container's http port) only, in one rule",
          len(ingress) == 1 and ingress[0].get("ports") == [{"protocol": "TCP", "port": 5001}] and ports.get("http") == 5001,
          ingress)
    check("extras: ingress only from the product-service's pods and the ama-metrics replica pods in kube-system",
          len(ingress) == 1 and ingress[0].get("from") == [
              {"podSelector": {"matchLabels": {"app": "product-service"}}},
              {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
               "podSelector": {"matchLabels": {"rsName": "ama-metrics"}}}], ingress)
    egress = nspec.get("egress", [])
    allowed = sorted((p.get("protocol", "TCP"), p["port"]) for rule in egress for p in rule.get("ports", []))
    check("extras: egress only to DNS (53 UDP and TCP) and HTTPS (443), every rule limited to its ports",
          egress and all(rule.get("ports") for rule in egress)
          and allowed == [("TCP", 53), ("TCP", 443), ("UDP", 53)], egress)

    # setup.sh fills placeholders by literal substitution: each must be in
    # the rendered manifests, or setup.sh would silently leave it unfilled.
    rendered = open(base_path).read()
    setup = open(setup_path).read()
    placeholders = dict(re.findall(r'^readonly (PH_\w+)="([^"]+)"', setup, re.M))
    missing = [k for k, v in placeholders.items() if v not in rendered]
    check("every placeholder setup.sh fills in is in the rendered manifests",
          len(placeholders) >= 6 and not missing, f"placeholders {placeholders}, missing {missing}")

    # The image and the pod must agree on the user and the port.
    dockerfile = open(dockerfile_path).read()
    user = re.search(r"^USER\s+(\d+):(\d+)\s*$", dockerfile, re.M)
    check("the Dockerfile's USER is the pod's runAsUser:runAsGroup",
          user and (int(user.group(1)), int(user.group(2))) == (psc.get("runAsUser"), psc.get("runAsGroup")),
          f"USER {user and user.groups()}")
    check("the Dockerfile exposes the container port 5001", re.search(r"^EXPOSE\s+5001\b", dockerfile, re.M))

    # scripts/static-rootfs-test.sh must test the binary the image ships:
    # both build through scripts/static-build.sh, which holds the flags.
    static_test = open(static_test_path).read()
    image_build = re.search(r'bash scripts/static-build\.sh --arch "\$TARGETARCH"', dockerfile)
    check("the Dockerfile and scripts/static-rootfs-test.sh build through scripts/static-build.sh",
          image_build and "scripts/static-build.sh" in static_test
          and "crt-static" not in dockerfile and "crt-static" not in static_test,
          f"Dockerfile: {image_build and image_build.group(0)!r}")
    # Multi-arch: the builder runs on the build machine and cross-compiles
    # for TARGETARCH; the runtime is the binary and the CA bundle alone.
    check("the Dockerfile's builder runs on the build platform and builds for TARGETARCH",
          re.search(r"^FROM --platform=\$BUILDPLATFORM \S+ AS builder$", dockerfile, re.M)
          and re.search(r"^ARG TARGETARCH$", dockerfile, re.M),
          "expected 'FROM --platform=$BUILDPLATFORM ... AS builder' and 'ARG TARGETARCH'")
    runtime = dockerfile[dockerfile.rfind("\nFROM "):]
    check("the image is FROM scratch with the binary, the CA bundle and a HEALTHCHECK",
          runtime.startswith("\nFROM scratch\n")
          and "COPY --from=builder /ai-service /ai-service" in runtime
          and "COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt" in runtime
          and re.search(r'^\s*CMD \["/ai-service", "healthcheck"\]', runtime, re.M),
          runtime[:200])

    return 0 if all(RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:6]))
