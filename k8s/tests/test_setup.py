#!/usr/bin/env python3
"""Tests of k8s/setup.sh against the fake az and kubectl in k8s/tests/fakes.

Each scenario runs the real script with the fakes first on PATH and a fresh
state directory, then asserts on its exit code, its messages, the commands
the fakes recorded (one line each, in order) and the state they were left
in. Prints one "ok - ..." or "not ok - ..." line per check (k8s/test.sh
counts them) and exits 1 if any failed.

The scenarios run in parallel, on as many threads as there are CPUs
(SETUP_TEST_JOBS=N sets the number), and print in a fixed order. The fakes
run in fake_server.py, which forks a warm Python for each command instead
of starting one (FAKE_SERVER=0 starts one each time, as `python3 FAKE`).
"""

import json
import os
import py_compile
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
SETUP = os.path.join(os.path.dirname(HERE), "setup.sh")
FAKES = os.path.join(HERE, "fakes")
ROOT = os.path.dirname(os.path.dirname(HERE))
SETTINGS = ["RG_NAME", "AKS_NAME", "MANAGED_IDENTITY_NAME", "FEDERATED_CREDENTIAL_NAME", "SERVICE_ACCOUNT_NAMESPACE",
            "SERVICE_ACCOUNT_NAME", "IMAGE", "AOAI_NAME", "AOAI_RG_NAME", "AOAI_DEPLOYMENT_NAME", "ROLLOUT_TIMEOUT",
            "VERBOSE", "KUBECONFIG", "ACR_NAME", "PLATFORMS", "SOURCE_DIR", "BUILD_TIMEOUT"]
SUBSCRIPTION = "11111111-1111-1111-1111-111111111111"
ROLE = "Cognitive Services OpenAI User"
ACCOUNT_ID = ("/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/myResourceGroup"
              "/providers/Microsoft.CognitiveServices/accounts/myaoai")
MUTATING = ("create", "update", "delete", "get-credentials", "run")
RESULTS = []


# The scenarios run in parallel threads (see run_scenarios); each keeps its
# lines here until they are printed, in the scenarios' order.
OUTPUT = threading.local()


def check(name, condition, detail=""):
    RESULTS.append(bool(condition))
    if condition:
        line = f"ok - setup.sh: {name}"
    else:
        text = str(detail).strip().replace("\n", "\n    ")
        line = f"not ok - setup.sh: {name}" + (f"\n    {text}" if text else "")
    lines = getattr(OUTPUT, "lines", None)
    if lines is None:
        print(line)
    else:
        lines.append(line)


class Run:
    """One run of setup.sh: exit code, output, recorded commands."""

    def __init__(self, proc, log_path):
        self.rc, self.out, self.err = proc.returncode, proc.stdout, proc.stderr
        self.calls = []
        if os.path.exists(log_path):
            with open(log_path) as f:
                self.calls = [shlex.split(line) for line in f if line.strip()]

    def detail(self):
        return f"rc={self.rc}\n--- stderr ---\n{self.err[-3000:]}\n--- calls ---\n" + "\n".join(
            shlex.join(c) for c in self.calls[-40:])

    def find(self, *prefix):
        """Index of the first recorded call starting with these words, or -1."""
        for i, call in enumerate(self.calls):
            if tuple(call[:len(prefix)]) == prefix:
                return i
        return -1

    def call(self, *prefix):
        i = self.find(*prefix)
        return self.calls[i] if i >= 0 else []

    def changes(self):
        return [c for c in self.calls if c[0] == "az" and any(w in MUTATING for w in c[1:5] if not w.startswith("-"))
                or c[:2] in (["kubectl", "apply"], ["kubectl", "create"], ["kubectl", "delete"])]


def flag(call, name):
    return call[call.index(name) + 1] if name in call else None


class World:
    """A state directory for the fakes, and a way to run setup.sh in it.
    setup.sh builds SOURCE (a git clone) unless a test says otherwise."""

    def __init__(self, root, name, source=None):
        self.dir = os.path.join(root, name)
        self.state = os.path.join(self.dir, "state")
        os.makedirs(self.state)
        self.bin = os.path.join(root, "bin")
        self.source = source or SOURCE["dir"]
        self.runs = 0

    def az_state(self):
        with open(os.path.join(self.state, "az.json")) as f:
            return json.load(f)

    def edit_az(self, fn):
        path = os.path.join(self.state, "az.json")
        if not os.path.exists(path):  # let the fake write its default world
            subprocess.run([os.path.join(self.bin, "az"), "group", "exists", "--name", "x"],
                           env=dict(os.environ, FAKE_STATE=self.state), capture_output=True, check=True)
        state = self.az_state()
        fn(state)
        with open(path, "w") as f:
            json.dump(state, f)

    def k8s_object(self, ns, kind, name):
        with open(os.path.join(self.state, "k8s", ns, kind, name + ".json")) as f:
            return json.load(f)

    def k8s_objects(self, ns, kind):
        d = os.path.join(self.state, "k8s", ns, kind)
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def applied(self):
        d = os.path.join(self.state, "applied")
        if not os.path.isdir(d):
            return ""
        return "".join(open(os.path.join(d, f)).read() for f in sorted(os.listdir(d)))

    def deployed_image(self, ns="default"):
        """The image of the Deployment the fake cluster holds."""
        dep = self.k8s_object(ns, "deployment", "ai-service")
        return dep["spec"]["template"]["spec"]["containers"][0]["image"]

    def registry(self, name):
        return next((r for k, r in self.az_state()["registries"].items() if k.endswith("/" + name)), None)

    def set_pools(self, *images):
        """Replaces the cluster's node pools by Linux pools running these node images."""
        self.edit_az(lambda s: s["clusters"]["myResourceGroup/myAKSCluster"].update(pools=[
            {"name": f"pool{i}", "osType": "Linux", "vmSize": "Standard_D4ps_v5" if "arm64" in img else "Standard_DS2_v2",
             "nodeImageVersion": img} for i, img in enumerate(images)]))

    def copy(self, name):
        other = World(os.path.dirname(self.dir), name, self.source)
        shutil.rmtree(other.state)
        shutil.copytree(self.state, other.state)
        return other

    def run(self, *args, path=None, default_source=False, **env):
        self.runs += 1
        log = os.path.join(self.dir, f"calls-{self.runs}.log")
        full = {k: v for k, v in os.environ.items() if k not in SETTINGS and not k.startswith("FAKE_")}
        full.update(PATH=path or f"{self.bin}:{os.environ['PATH']}", FAKE_STATE=self.state, FAKE_LOG=log,
                    FAKE_REAL_KUBECTL=REAL_KUBECTL, FAKE_JSONPATH_CACHE=os.path.join(os.path.dirname(self.dir), "jsonpath"),
                    RETRY_DELAY="0", KUBECONFIG=os.path.join(self.state, "kubeconfig"))
        if not default_source:
            full["SOURCE_DIR"] = self.source
        full.update(env)
        proc = subprocess.run(["bash", SETUP, *args], capture_output=True, text=True, env=full, timeout=300,
                              stdin=subprocess.DEVNULL)
        return Run(proc, log)


def make_bin(root, server=None):
    """Wrappers that run the fakes with this interpreter (which has PyYAML
    and jmespath), and a PATH that has everything but az.

    A fake runs for every az or kubectl command, some 750 times in all, so
    the wrappers have it run by the fake server (fake_server.py) when there
    is one (server: its port and token), which forks a warm interpreter for
    each. Without one, or when it says so, they start the fake themselves,
    fast: compiled to bytecode once, here, which Python runs as it is, and
    with -S, which skips the site module's start-up work (it runs the .pth
    files of site-packages, which may import whole packages); the
    directories site adds to the module path come through PYTHONPATH
    instead, so the fakes import what this interpreter imports."""
    bin_dir = os.path.join(root, "bin")
    os.makedirs(bin_dir)
    bare = set(subprocess.run([sys.executable, "-S", "-c", "import sys; print('\\n'.join(sys.path))"],
                              capture_output=True, text=True, check=True).stdout.splitlines())
    site_dirs = os.pathsep.join(p for p in sys.path if p and os.path.abspath(p) != HERE and p not in bare)
    bash = shutil.which("bash") or "/bin/bash"
    for tool in ("az", "kubectl"):
        compiled = os.path.join(bin_dir, tool + ".pyc")
        py_compile.compile(os.path.join(FAKES, tool), cfile=compiled, doraise=True)
        path = os.path.join(bin_dir, tool)
        with open(path, "w") as f:
            if server:
                port, token = server
                f.write(f"""#!{bash}
# The fake {tool}, run by the fake server (k8s/tests/fake_server.py), or
# below when the server cannot.
if {{ exec 3<>/dev/tcp/127.0.0.1/{port}; }} 2>/dev/null; then
  # The server takes stdin, stdout and stderr from 5, 6 and 7, which stay
  # put while printf redirects 1.
  {{ exec 5<&0 6>&1; }} 2>/dev/null
  exec 7>&2
  printf '%s\\0' {token} {tool} "$$" "$#" "$@" >&3
  IFS= read -r -u 3 answer || true
  exec 3<&- 5<&- 6>&- 7>&-
  case $answer in
    direct) ;;
    [0-9] | [0-9][0-9] | [0-9][0-9][0-9]) exit "$answer" ;;
    *)
      echo "{tool}: the fake server gave no exit code" >&2
      exit 1
      ;;
  esac
fi
""")
            else:
                f.write("#!/bin/sh\n")
            if site_dirs:
                f.write(f"PYTHONPATH=${{PYTHONPATH:+$PYTHONPATH:}}{shlex.quote(site_dirs)}\nexport PYTHONPATH\n")
            f.write(f'exec {shlex.quote(sys.executable)} -S {shlex.quote(compiled)} "$@"\n')
        os.chmod(path, 0o755)
    no_az = os.path.join(root, "no-az")
    os.makedirs(no_az)
    for d in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(d) or d == bin_dir:
            continue
        for name in os.listdir(d):
            target = os.path.join(d, name)
            if name not in ("az", "kubectl") and not os.path.exists(os.path.join(no_az, name)) and os.access(target, os.X_OK):
                os.symlink(target, os.path.join(no_az, name))
    os.symlink(os.path.join(bin_dir, "kubectl"), os.path.join(no_az, "kubectl"))
    return no_az


GIT = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "init.defaultBranch=main"]
# What the fixture clone holds: the real Dockerfile and .dockerignore (so the
# fake ACR judges the real build), the sources they need, and k8s/.
FIXTURE_FILES = ["Dockerfile", ".dockerignore", ".gitignore", "Cargo.toml", "Cargo.lock", "src", "k8s/deployment.yaml"]
SOURCE = {}


def git(repo, *args):
    return subprocess.run([*GIT, "-C", repo, *args], capture_output=True, text=True, check=True).stdout.strip()


def make_source(root):
    """A git clone of the essentials of this repository, with one commit."""
    repo = os.path.join(root, "source")
    for rel in FIXTURE_FILES:
        src, dst = os.path.join(ROOT, rel), os.path.join(repo, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.isdir(src):
            shutil.copytree(src, dst)
        else:
            shutil.copy(src, dst)
    with open(os.path.join(repo, ".env"), "w") as f:  # ignored by .gitignore: must never be uploaded
        f.write("OPENAI_API_KEY=not-a-real-key\n")
    subprocess.run([*GIT, "init", "-q", repo], check=True)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "fixture")
    return repo


def clone_source(root, name):
    dst = os.path.join(root, name)
    subprocess.run([*GIT, "clone", "-q", SOURCE["dir"], dst], check=True)
    return dst


def registry_name(cluster="myAKSCluster", rg="myResourceGroup"):
    """The name setup.sh derives for a cluster's registry, computed here
    from its definition: the cluster name's lowercase letters and digits,
    "acr", and the POSIX cksum of subscription/resource group/cluster."""
    crc = subprocess.run(["cksum"], input=f"{SUBSCRIPTION}/{rg}/{cluster}", capture_output=True, text=True,
                         check=True).stdout.split()[0]
    return "".join(ch for ch in cluster.lower() if ch.isalnum())[:39] + "acr" + "%08x" % int(crc)


def build_task(platform, tag, timeout="7200"):
    return (f"version: v1.1.0\nstepTimeout: {timeout}\nsteps:\n"
            f"  - build: -t $Registry/ai-service:{tag} --platform {platform} -f ai-service.Dockerfile .\n"
            f"    env: [\"DOCKER_BUILDKIT=1\"]\n"
            f"  - push: [\"$Registry/ai-service:{tag}\"]\n")


def acr_runs(r):
    return [c for c in r.calls if c[:3] == ["az", "acr", "run"]]


def test_first_run(w):
    r = w.run()
    check("a first run succeeds", r.rc == 0, r.detail())
    state = w.az_state()
    ident = state["identities"].get("myResourceGroup/myIdentity", {})
    issuer_prefix = "https://eastus.oic.prod-aks.azure.com/22222222-2222-2222-2222-222222222222/"
    reads_issuer = [i for i, c in enumerate(r.calls)
                    if c[:3] == ["az", "aks", "show"] and flag(c, "--query") == "oidcIssuerProfile.issuerUrl"]
    # The seed's order. (The account id is looked up earlier, as a
    # prerequisite, so that a missing account stops the script before any
    # change.)
    steps = [("az aks update", r.find("az", "aks", "update")),
             ("az aks show --query oidcIssuerProfile.issuerUrl", reads_issuer[0] if reads_issuer else -1),
             ("az identity create", r.find("az", "identity", "create")),
             ("az role assignment create", r.find("az", "role", "assignment", "create")),
             ("az identity federated-credential create", r.find("az", "identity", "federated-credential", "create")),
             ("az aks get-credentials", r.find("az", "aks", "get-credentials")),
             ("az cognitiveservices account show", r.find("az", "cognitiveservices", "account", "show", "--name", "myaoai",
                                                          "--resource-group", "myResourceGroup", "--query",
                                                          "properties.endpoint")),
             ("az cognitiveservices account deployment list", r.find("az", "cognitiveservices", "account", "deployment", "list")),
             ("kubectl apply", r.find("kubectl", "apply"))]
    positions = [p for _, p in steps]
    check("the seed's commands run, in the seed's order",
          all(p >= 0 for p in positions) and positions == sorted(positions)
          and 0 <= r.find("az", "resource", "list") < positions[0],
          "\n".join(f"{name}: call #{p}" for name, p in steps) + "\n" + r.detail())

    update = r.call("az", "aks", "update")
    check("az aks update enables the OIDC issuer and workload identity",
          "--enable-oidc-issuer" in update and "--enable-workload-identity" in update
          and flag(update, "--resource-group") == "myResourceGroup" and flag(update, "--name") == "myAKSCluster", update)
    check("the issuer URL is read with --query oidcIssuerProfile.issuerUrl",
          any(c[:3] == ["az", "aks", "show"] and flag(c, "--query") == "oidcIssuerProfile.issuerUrl" for c in r.calls))
    create = r.call("az", "identity", "create")
    check("az identity create makes myIdentity in myResourceGroup",
          flag(create, "--name") == "myIdentity" and flag(create, "--resource-group") == "myResourceGroup", create)
    check("the Azure OpenAI account is found by resource type",
          flag(r.call("az", "resource", "list"), "--resource-type") == "Microsoft.CognitiveServices/accounts")
    role = r.call("az", "role", "assignment", "create")
    check("the role assignment names the role, the identity's principal id, its type and the account's id",
          flag(role, "--role") == ROLE and flag(role, "--assignee-object-id") == ident.get("principalId")
          and flag(role, "--assignee-principal-type") == "ServicePrincipal" and flag(role, "--scope") == ACCOUNT_ID, role)
    fic = r.call("az", "identity", "federated-credential", "create")
    cluster_issuer = state["federatedCredentials"].get("myResourceGroup/myIdentity/myFederatedCredential", {}).get("issuer", "")
    check("the federated credential trusts the cluster's issuer for system:serviceaccount:default:ai-service-account",
          (flag(fic, "--issuer") or "").startswith(issuer_prefix)
          and flag(fic, "--subject") == "system:serviceaccount:default:ai-service-account"
          and flag(fic, "--audience") == "api://AzureADTokenExchange" and flag(fic, "--identity-name") == "myIdentity"
          and flag(fic, "--name") == "myFederatedCredential" and cluster_issuer == flag(fic, "--issuer"), fic)
    check("the chat deployment is chosen over the image deployment listed first",
          "value: gpt-5-mini" in w.applied(), w.applied())
    applied = w.applied()
    check("the applied manifests carry the client id, the endpoint and no placeholder",
          f"azure.workload.identity/client-id: {ident.get('clientId')}" in applied
          and "value: https://myaoai.openai.azure.com/" in applied and "YOUR-" not in applied
          and "00000000-0000-0000-0000-000000000000" not in applied, applied)
    check("the ServiceAccount, Deployment and Service exist in namespace default",
          w.k8s_objects("default", "serviceaccount") == ["ai-service-account.json"]
          and w.k8s_objects("default", "deployment") == ["ai-service.json"]
          and w.k8s_objects("default", "service") == ["ai-service.json"])
    check("the script waits for the rollout", r.find("kubectl", "rollout", "status") > r.find("kubectl", "apply"))
    return r


def test_first_run_image(w, r):
    """What the first run did about the image, from the same run."""
    sha = git(w.source, "rev-parse", "--short=12", "HEAD")
    acr = registry_name()
    image = f"{acr}.azurecr.io/ai-service:{sha}"
    create = r.call("az", "acr", "create")
    check("with no registry in the resource group, one named after the cluster is created (Basic)",
          create == ["az", "acr", "create", "--resource-group", "myResourceGroup", "--name", acr, "--sku", "Basic",
                     "--query", "loginServer", "-o", "tsv"], r.detail())
    check("the new registry's name is free: it is checked first",
          0 <= r.find("az", "acr", "check-name", "--name", acr) < r.find("az", "acr", "create"), r.detail())
    runs = acr_runs(r)
    stage = runs[0][-1] if runs else ""
    check("one ACR Tasks run builds the image for the cluster's amd64 pool, from a staged copy of the clone",
          runs == [["az", "acr", "run", "--registry", acr, "--platform", "linux/amd64", "--file", "acr-task-amd64.yaml",
                    "--timeout", "7200", stage]] and stage.endswith("/context"), r.detail())
    recorded = w.az_state()["acrRuns"]
    run = recorded[0] if recorded else {}
    check("the task builds and pushes ai-service:<commit> for linux/amd64 with BuildKit, past the 600 s step default",
          len(recorded) == 1 and run["task"] == build_task("linux/amd64", sha), run.get("task"))
    uploaded = run.get("uploaded", [])
    dockerfile = open(os.path.join(ROOT, "Dockerfile")).read()
    dockerignore = open(os.path.join(ROOT, ".dockerignore")).read()
    check("the upload carries this repository's Dockerfile, renamed past .dockerignore's 'Dockerfile' rule",
          run.get("files", {}).get("ai-service.Dockerfile") == dockerfile and "Dockerfile" not in uploaded, uploaded)
    check("the renamed Dockerfile's own ignore file is .dockerignore plus the files setup.sh adds",
          run.get("files", {}).get("ai-service.Dockerfile.dockerignore") == dockerignore
          + "# Added by k8s/setup.sh for ACR Tasks:\nai-service.Dockerfile\nai-service.Dockerfile.dockerignore\n"
            "acr-task-*.yaml\n", run.get("files"))
    check("the upload has the sources and the lock file, not .git, .env (git-ignored) or k8s/",
          {"src/main.rs", "Cargo.toml", "Cargo.lock", "acr-task-amd64.yaml"} <= set(uploaded)
          and not [f for f in uploaded if f.startswith((".git/", "k8s/", "target/")) or f == ".env"], uploaded)
    check("the registry holds ai-service:<commit> for linux/amd64",
          (w.registry(acr) or {}).get("repositories", {}).get("ai-service") == {sha: {"platforms": ["linux/amd64"]}},
          w.registry(acr))
    attach = r.call("az", "aks", "update", "--resource-group", "myResourceGroup", "--name", "myAKSCluster", "--attach-acr")
    check("the cluster is attached to the new registry (no check-acr: a registry created now cannot be pulled from yet)",
          attach == ["az", "aks", "update", "--resource-group", "myResourceGroup", "--name", "myAKSCluster",
                     "--attach-acr", acr, "-o", "none"]
          and r.find("az", "aks", "check-acr") < 0 and w.az_state()["clusters"]["myResourceGroup/myAKSCluster"]["attachedAcrs"]
          == [f"myResourceGroup/{acr}"], r.detail())
    check("build, attach and apply come in that order, after the federated credential",
          0 <= r.find("az", "identity", "federated-credential", "create") < r.find("az", "acr", "run")
          < r.find("az", "aks", "update", "--resource-group", "myResourceGroup", "--name", "myAKSCluster", "--attach-acr")
          < r.find("kubectl", "apply"), r.detail())
    check("the applied Deployment runs exactly the built image", w.deployed_image() == image
          and f"image: {image}\n" in w.applied(), w.deployed_image())
    check("the Python original's image is named nowhere in what was applied",
          "ghcr.io/azure-samples" not in w.applied() and "YOUR-" not in w.applied(), w.applied())


def test_second_run(w):
    before = w.az_state()["changes"]
    r = w.run()
    check("a second run succeeds", r.rc == 0, r.detail())
    creates = [c for c in r.changes() if c[:3] != ["az", "aks", "get-credentials"] and c[:2] != ["kubectl", "apply"]]
    check("a second run issues no create, update, assignment or delete", not creates, "\n".join(map(shlex.join, creates)))
    check("a second run changes nothing in Azure", w.az_state()["changes"] == before, w.az_state()["changes"])
    check("a second run reports every step as already done",
          r.err.count("skipping") >= 4 and "unchanged" in r.out + r.err, r.err)
    acr = registry_name()
    check("a second run builds nothing: the registry has the commit's tag",
          not acr_runs(r) and r.find("az", "acr", "create") < 0
          and r.find("az", "acr", "repository", "show-tags", "--name", acr, "--repository", "ai-service") >= 0
          and "is already in the registry, skipping the build" in r.err, r.detail())
    check("a second run attaches nothing: check-acr finds that the cluster can pull",
          r.call("az", "aks", "check-acr") == ["az", "aks", "check-acr", "--resource-group", "myResourceGroup", "--name",
                                               "myAKSCluster", "--acr", f"{acr}.azurecr.io"]
          and r.find("az", "aks", "update") < 0 and "can already pull" in r.err, r.detail())


def test_verify(healthy):
    r = healthy.run("--verify")
    check("--verify passes on a healthy setup", r.rc == 0 and "everything is in place" in r.err and "problem:" not in r.err,
          r.detail())
    check("--verify runs '/ai-service check' in the pod",
          any(c[:2] == ["kubectl", "exec"] and c[-2:] == ["/ai-service", "check"] for c in r.calls))
    check("--verify changes nothing", not [c for c in r.changes() if c[:3] != ["az", "aks", "get-credentials"]],
          r.detail())
    # Each breaks a copy of the healthy world; they run in parallel.
    in_parallel(lambda: verify_no_subdomain(healthy.copy("no-subdomain")), lambda: verify_api_key(healthy.copy("api-key")),
                lambda: verify_wrong_subject(healthy.copy("wrong-subject")), lambda: verify_no_role(healthy.copy("no-role")),
                lambda: verify_check_fails(healthy.copy("check-fails")))


def verify_no_subdomain(w):
    w.edit_az(lambda s: s["accounts"]["myResourceGroup/myaoai"].update(customSubDomainName=None))
    r = w.run("--verify")
    check("--verify reports a missing custom subdomain, with the fix",
          r.rc != 0 and "no custom subdomain" in r.err and "--custom-domain" in r.err, r.detail())


def verify_api_key(w):
    pod = w.k8s_objects("default", "pod")[0]
    path = os.path.join(w.state, "k8s", "default", "pod", pod)
    obj = json.load(open(path))
    obj["spec"]["containers"][0]["env"].append({"name": "AZURE_OPENAI_API_KEY", "value": "not-a-real-key"})
    json.dump(obj, open(path, "w"))
    r = w.run("--verify")
    check("--verify reports an API key in the pod's environment",
          r.rc != 0 and "AZURE_OPENAI_API_KEY" in r.err and "problem:" in r.err, r.detail())


def verify_wrong_subject(w):
    w.edit_az(lambda s: s["federatedCredentials"]["myResourceGroup/myIdentity/myFederatedCredential"].update(
        subject="system:serviceaccount:default:default"))
    r = w.run("--verify")
    check("--verify reports a federated credential with the wrong subject",
          r.rc != 0 and "system:serviceaccount:default:default" in r.err and "AADSTS700213" in r.err, r.detail())


def verify_no_role(w):
    w.edit_az(lambda s: s.update(roleAssignments=[]))
    r = w.run("--verify")
    check("--verify reports a missing role assignment", r.rc != 0 and f"lacks the role '{ROLE}'" in r.err, r.detail())


def verify_check_fails(w):
    with open(os.path.join(w.state, "check.json"), "w") as f:
        json.dump({"rc": 1, "out": "error: the token exchange failed: AADSTS70021"}, f)
    r = w.run("--verify")
    check("--verify reports a failing '/ai-service check' with its output",
          r.rc != 0 and "AADSTS70021" in r.err and "'/ai-service check' in the pod failed" in r.err, r.detail())


def test_verify_image(healthy):
    r = healthy.run("--verify")
    check("--verify runs '/ai-service --version' in the pod and names the version and the image",
          any(c[:2] == ["kubectl", "exec"] and c[-2:] == ["/ai-service", "--version"] for c in r.calls)
          and f"ok:      the pod runs this ai-service: ai-service 0.1.0 (image {healthy.deployed_image()})" in r.err,
          r.detail())
    check("--verify shows the diagnostic lines of a passing '/ai-service check'",
          "'/ai-service check' in the pod succeeded" in r.err
          and "token: ok from WorkloadIdentityCredential (expires in 3599 s)" in r.err, r.err)
    in_parallel(lambda: verify_pull_backoff(healthy.copy("pull-backoff")),
                lambda: verify_python_image(World(os.path.dirname(healthy.dir), "python-image")))


def verify_pull_backoff(w):
    acr = registry_name()
    pod = w.k8s_objects("default", "pod")[0]
    path = os.path.join(w.state, "k8s", "default", "pod", pod)
    obj = json.load(open(path))
    obj["status"] = {"phase": "Pending", "containerStatuses": [
        {"name": "ai-service", "image": obj["spec"]["containers"][0]["image"], "ready": False,
         "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}
    json.dump(obj, open(path, "w"))
    r = w.run("--verify")
    check("--verify fails on a pod in ImagePullBackOff, with the registry attach as the fix",
          r.rc != 0 and f"cannot pull its image {w.deployed_image()} (ImagePullBackOff)" in r.err
          and f"fix: az aks update --resource-group myResourceGroup --name myAKSCluster --attach-acr {acr}" in r.err,
          r.detail())
    check("--verify does not exec into a pod that cannot pull its image",
          not [c for c in r.calls if c[:2] == ["kubectl", "exec"]] and "is Pending" not in r.err, r.detail())


def verify_python_image(w):
    python_image = "ghcr.io/azure-samples/aks-store-demo/ai-service:latest"
    r = w.run(IMAGE=python_image)
    r = w.run("--verify")
    check("--verify fails when the running image is not this service (the Python original)",
          r.rc != 0 and f"the image {python_image} is not this ai-service" in r.err
          and "/ai-service: no such file or directory" in r.err, r.detail())
    check("--verify does not run '/ai-service check' in an image that is not this service",
          not [c for c in r.calls if c[-2:] == ["/ai-service", "check"]], r.detail())


def test_architectures(root):
    sha = SOURCE["sha"]
    acr = registry_name()
    w = World(root, "arm64")
    w.set_pools("AKSUbuntu-2204gen2arm64containerd-202501.12.0")
    r = w.run()
    recorded = w.az_state()["acrRuns"]
    check("an Arm64 node pool gets a linux/arm64 build on an arm64 agent, under the plain commit tag",
          r.rc == 0 and [c[:10] for c in acr_runs(r)] == [["az", "acr", "run", "--registry", acr, "--platform",
                                                            "linux/arm64", "--file", "acr-task-arm64.yaml", "--timeout"]]
          and [x["task"] for x in recorded] == [build_task("linux/arm64", sha)]
          and w.deployed_image() == f"{acr}.azurecr.io/ai-service:{sha}", r.detail())

    w = World(root, "mixed")
    w.set_pools("AKSUbuntu-2204gen2containerd-202501.12.0", "AKSAzureLinux-V2gen2arm64-202501.12.0")
    r = w.run()
    runs = acr_runs(r)
    recorded = w.az_state()["acrRuns"]
    join = (f"version: v1.1.0\nsteps:\n  - cmd: docker manifest create $Registry/ai-service:{sha} "
            f"$Registry/ai-service:{sha}-amd64 $Registry/ai-service:{sha}-arm64\n"
            f"  - cmd: docker manifest push --purge $Registry/ai-service:{sha}\n")
    check("a mixed cluster gets one build per platform, tagged <commit>-<arch>",
          r.rc == 0 and [(c[6], c[8]) for c in runs[:2]] == [("linux/amd64", "acr-task-amd64.yaml"),
                                                            ("linux/arm64", "acr-task-arm64.yaml")]
          and [x["task"] for x in recorded[:2]] == [build_task("linux/amd64", f"{sha}-amd64"),
                                                      build_task("linux/arm64", f"{sha}-arm64")], r.detail())
    check("then a run with no context joins them under the commit tag with docker manifest create and push",
          len(runs) == 3 and runs[2][:5] == ["az", "acr", "run", "--registry", acr] and runs[2][-1] == "/dev/null"
          and runs[2][5] == "--file" and runs[2][6].endswith("/acr-task-manifest.yaml")
          and len(recorded) == 3 and recorded[2]["task"] == join, r.detail())
    tags = (w.registry(acr) or {}).get("repositories", {}).get("ai-service", {})
    check("the commit tag is one manifest list of linux/amd64 and linux/arm64, and the Deployment runs it",
          tags.get(sha) == {"platforms": ["linux/amd64", "linux/arm64"], "manifestList": True}
          and w.deployed_image() == f"{acr}.azurecr.io/ai-service:{sha}", tags)
    r = w.run("--dry-run")
    check("a second run on a mixed cluster builds nothing",
          r.rc == 0 and "is already in the registry, skipping the build" in r.err and "would run: az acr run" not in r.err,
          r.detail())

    w = World(root, "mixed-resume")
    w.set_pools("AKSUbuntu-2204gen2containerd-202501.12.0", "AKSUbuntu-2204gen2arm64containerd-202501.12.0")
    w.edit_az(lambda s: s["registries"].update({f"myResourceGroup/{acr}": {
        "loginServer": f"{acr}.azurecr.io", "sku": "Basic",
        "repositories": {"ai-service": {f"{sha}-amd64": {"platforms": ["linux/amd64"]}}}}}))
    r = w.run()
    runs = acr_runs(r)
    check("a multi-arch build cut short resumes: only the missing platform is built before the join",
          r.rc == 0 and len(runs) == 2 and runs[0][5:7] == ["--platform", "linux/arm64"] and runs[1][-1] == "/dev/null"
          and (w.registry(acr) or {}).get("repositories", {}).get("ai-service", {}).get(sha, {}).get("platforms")
          == ["linux/amd64", "linux/arm64"], r.detail())

    w = World(root, "platforms")
    r = w.run("--dry-run", PLATFORMS="linux/arm64,linux/amd64")
    check("PLATFORMS overrides the node pools", r.rc == 0 and r.find("az", "aks", "nodepool", "list") < 0
          and "for linux/amd64 linux/arm64" in r.err, r.detail())
    r = w.run("--dry-run", PLATFORMS="linux/s390x")
    check("an unknown platform in PLATFORMS stops the script with the allowed values",
          r.rc != 0 and "PLATFORMS names 'linux/s390x'" in r.err and not r.changes(), r.detail())


def test_registries(root):
    sha = SOURCE["sha"]
    w = World(root, "one-registry")
    w.edit_az(lambda s: s["registries"].update({"myResourceGroup/storeacr": {
        "loginServer": "storeacr.azurecr.io", "sku": "Standard", "repositories": {}}}))
    r = w.run()
    check("the only registry of the resource group is used, not a new one",
          r.rc == 0 and r.find("az", "acr", "create") < 0 and acr_runs(r) and acr_runs(r)[0][4] == "storeacr"
          and w.deployed_image() == f"storeacr.azurecr.io/ai-service:{sha}", r.detail())
    check("an existing registry the cluster cannot pull from is attached after check-acr says so",
          0 <= r.find("az", "aks", "check-acr", "--resource-group", "myResourceGroup", "--name", "myAKSCluster", "--acr",
                      "storeacr.azurecr.io")
          < r.find("az", "aks", "update", "--resource-group", "myResourceGroup", "--name", "myAKSCluster",
                   "--attach-acr", "storeacr") and "Validating image pull permission: FAILED" in r.err, r.detail())

    w = World(root, "two-registries")
    w.edit_az(lambda s: s["registries"].update({
        "myResourceGroup/storeacr": {"loginServer": "storeacr.azurecr.io", "sku": "Basic", "repositories": {}},
        "myResourceGroup/otheracr": {"loginServer": "otheracr.azurecr.io", "sku": "Basic", "repositories": {}}}))
    r = w.run()
    check("two registries and no ACR_NAME stop the script before any change, asking for ACR_NAME",
          r.rc != 0 and re.search(r"several container registries \((storeacr,otheracr|otheracr,storeacr)\)", r.err)
          and "Set ACR_NAME" in r.err
          and not r.changes(), r.detail())
    r = w.run("--dry-run", ACR_NAME="OtherAcr")
    check("ACR_NAME picks the registry (case does not matter)",
          r.rc == 0 and "would run: az acr run --registry otheracr " in r.err
          and f"image: otheracr.azurecr.io/ai-service:{sha}\n" in r.out, r.detail())

    w = World(root, "named-registry")
    r = w.run("--dry-run", ACR_NAME="teamimages")
    check("a missing ACR_NAME is created in the resource group, and the script says so",
          r.rc == 0 and "would run: az acr create --resource-group myResourceGroup --name teamimages --sku Basic" in r.err
          and "registry teamimages does not exist: creating it in myResourceGroup" in r.err, r.detail())

    w = World(root, "taken-name")
    w.edit_az(lambda s: s.update(takenRegistryNames=[registry_name()]))
    r = w.run()
    check("a derived registry name taken elsewhere stops the script before any change, asking for ACR_NAME",
          r.rc != 0 and f"The registry name '{registry_name()}' is taken" in r.err and "Set ACR_NAME" in r.err
          and not r.changes(), r.detail())
    r = w.run(ACR_NAME="no")
    check("an ACR_NAME that is not a registry name is refused", r.rc != 0 and "ACR_NAME 'no' is not a registry name" in r.err
          and not r.changes(), r.detail())

    w = World(root, "build-fails")
    r = w.run(FAKE_FAIL="acr-run")
    check("a failed build stops the script before the attach and the apply, naming the free-credit case",
          r.rc != 0 and "Building ai-service:" in r.err and "TasksOperationsNotAllowed" in r.err
          and r.find("kubectl", "apply") < 0 and r.find("az", "aks", "update", "--resource-group", "myResourceGroup",
                                                         "--name", "myAKSCluster", "--attach-acr") < 0, r.detail())


def test_source_tags(root):
    sha = SOURCE["sha"]
    acr = registry_name()
    repo = clone_source(root, "dirty-source")
    w = World(root, "dirty", repo)
    with open(os.path.join(repo, "src", "main.rs"), "a") as f:
        f.write("// a local change\n")
    r = w.run()
    tags = set((w.registry(acr) or {}).get("repositories", {}).get("ai-service", {}))
    dirty = next(iter(tags), "")
    check("a tree with uncommitted changes is tagged <commit>-dirty-<8 hex> and built",
          r.rc == 0 and len(tags) == 1 and re.fullmatch(re.escape(sha) + r"-dirty-[0-9a-f]{8}", dirty)
          and w.deployed_image() == f"{acr}.azurecr.io/ai-service:{dirty}" and len(acr_runs(r)) == 1, r.detail())
    r = w.run("--dry-run")
    check("the same uncommitted changes keep their tag: nothing is rebuilt",
          r.rc == 0 and f"{dirty} is already in the registry, skipping the build" in r.err
          and "would run: az acr run" not in r.err, r.detail())
    with open(os.path.join(repo, "notes.txt"), "w") as f:
        f.write("an untracked file\n")
    r = w.run()
    tags2 = set((w.registry(acr) or {}).get("repositories", {}).get("ai-service", {}))
    check("another change (an untracked file) gets a new dirty tag, a build and a rollout",
          r.rc == 0 and len(tags2) == 2 and len(acr_runs(r)) == 1 and w.deployed_image().split(":")[-1] in tags2 - tags,
          r.detail())

    repo = clone_source(root, "k8s-edit-source")
    with open(os.path.join(repo, "k8s", "deployment.yaml"), "a") as f:
        f.write("# filled in by hand\n")
    w = World(root, "k8s-edit", repo)
    r = w.run("--dry-run")
    check("changes under k8s/ alone do not make the image dirty", r.rc == 0 and f"ai-service:{sha} for" in r.err, r.detail())

    plain = os.path.join(root, "not-a-clone")
    os.makedirs(plain)
    shutil.copy(os.path.join(ROOT, "Dockerfile"), plain)
    r = World(root, "no-git", plain).run()
    check("a SOURCE_DIR that is not a git clone stops the script before any change, offering IMAGE",
          r.rc != 0 and "Could not read the git commit of SOURCE_DIR" in r.err and "set IMAGE" in r.err
          and not r.changes(), r.detail())

    r = World(root, "default-source").run("--dry-run", default_source=True)
    root_sha = git(ROOT, "rev-parse", "--short=12", "HEAD")
    check("by default the image is built from this repository at its commit",
          r.rc == 0 and f"ai-service:{root_sha}" in r.err and f"from {ROOT}\n" in r.err, r.detail())


def test_fake_acr(root):
    """The fake ACR rejects what real ACR Tasks reject, so the assertions
    above on a passing build mean something."""
    w = World(root, "fake-acr")
    w.edit_az(lambda s: s["registries"].update({"myResourceGroup/fakeacr": {
        "loginServer": "fakeacr.azurecr.io", "sku": "Basic", "repositories": {}}}))
    ctx = clone_source(root, "fake-acr-context")
    env = dict(os.environ, FAKE_STATE=w.state)

    def acr_run(task):
        with open(os.path.join(ctx, "task.yaml"), "w") as f:
            f.write(task)
        return subprocess.run([os.path.join(w.bin, "az"), "acr", "run", "--registry", "fakeacr", "--file", "task.yaml",
                               ctx], capture_output=True, text=True, env=env)

    p = acr_run("version: v1.1.0\nsteps:\n  - build: -t $Registry/ai-service:x -f Dockerfile .\n"
                "    env: [\"DOCKER_BUILDKIT=1\"]\n")
    check("the fake ACR refuses a Dockerfile that .dockerignore keeps out of the upload, as az acr run does",
          p.returncode != 0 and "Dockerfile Dockerfile is not in the uploaded context" in p.stderr, p.stderr)
    shutil.copy(os.path.join(ctx, "Dockerfile"), os.path.join(ctx, "other.Dockerfile"))
    p = acr_run("version: v1.1.0\nsteps:\n  - build: -t $Registry/ai-service:x -f other.Dockerfile .\n")
    check("the fake ACR refuses this Dockerfile without DOCKER_BUILDKIT=1, as the classic builder does",
          p.returncode != 0 and "the --mount option requires BuildKit" in p.stderr, p.stderr)


def test_failing_step(root):
    w = World(root, "fail")
    r = w.run(FAKE_FAIL="identity-create")
    check("a failing step stops the script with a non-zero exit", r.rc != 0, r.detail())
    check("the failure says what failed and what to do",
          "error: Creating managed identity 'myIdentity' failed" in r.err and "Managed Identity Contributor" in r.err, r.err)
    check("nothing runs after the failing command",
          r.calls and r.calls[-1][:3] == ["az", "identity", "create"], r.detail())


def test_prerequisites(root, no_az):
    w = World(root, "no-az")
    r = w.run(path=no_az)
    check("without az on PATH the script stops with the prerequisite sentence",
          r.rc != 0 and "The Azure CLI (az) is not on PATH" in r.err and not r.calls, r.detail())
    r = World(root, "logged-out").run(FAKE_NOT_LOGGED_IN="1")
    check("when az is logged out the script says to run 'az login'",
          r.rc != 0 and "not logged in" in r.err and "az login" in r.err and len(r.calls) == 1, r.detail())
    r = World(root, "no-rg").run(RG_NAME="nope")
    check("a missing resource group is named, with the fix", r.rc != 0 and "Resource group 'nope' does not exist" in r.err,
          r.detail())
    r = World(root, "no-aks").run(AKS_NAME="otherCluster")
    check("a missing cluster is named, with the fix",
          r.rc != 0 and "AKS cluster 'otherCluster' was not found" in r.err, r.detail())

    w = World(root, "two-accounts")
    w.edit_az(lambda s: s["accounts"].update({"myResourceGroup/second": dict(s["accounts"]["myResourceGroup/myaoai"],
                                                                             customSubDomainName="second")}))
    r = w.run()
    check("two Azure OpenAI accounts stop the script, asking for AOAI_NAME",
          r.rc != 0 and "several Azure OpenAI accounts (myaoai,second)" in r.err and "AOAI_NAME" in r.err
          and not r.changes(), r.detail())
    r = w.run(AOAI_NAME="second")
    role = r.call("az", "role", "assignment", "create")
    check("AOAI_NAME picks the account", r.rc == 0 and flag(role, "--scope").endswith("/accounts/second")
          and "https://second.openai.azure.com/" in w.applied(), r.detail())

    w = World(root, "regional-endpoint")
    w.edit_az(lambda s: s["accounts"]["myResourceGroup/myaoai"].update(customSubDomainName=None))
    r = w.run()
    check("an account without a custom subdomain stops the script before any change",
          r.rc != 0 and "no custom subdomain" in r.err and not r.changes(), r.detail())


def test_dry_run(root):
    w = World(root, "dry")
    r = w.run("--dry-run")
    state = w.az_state()
    check("--dry-run succeeds", r.rc == 0, r.detail())
    check("--dry-run changes nothing (no create recorded, no kubeconfig, nothing applied)",
          state["changes"] == [] and not r.changes() and not os.path.exists(os.path.join(w.state, "kubeconfig"))
          and not w.applied(), r.detail())
    check("--dry-run prints every command that would change something",
          all(f"would run: {s}" in r.err for s in ("az aks update", "az identity create", "az role assignment create",
                                                   "az identity federated-credential create", "az aks get-credentials",
                                                   "kubectl apply")), r.err)
    check("--dry-run prints the manifests it would apply, with the endpoint filled in",
          "kind: Deployment" in r.out and "value: https://myaoai.openai.azure.com/" in r.out, r.out)
    acr = registry_name()
    check("--dry-run prints the registry creation, the build and the attach without running them",
          f"would run: az acr create --resource-group myResourceGroup --name {acr} --sku Basic" in r.err
          and f"would run: az acr run --registry {acr} --platform linux/amd64 --file acr-task-amd64.yaml --timeout 7200 "
          in r.err and f"would run: az aks update --resource-group myResourceGroup --name myAKSCluster --attach-acr {acr}"
          in r.err and build_task("linux/amd64", SOURCE["sha"]).replace("\n", "\n      ").strip() in r.err
          and not state["registries"] and not state["acrRuns"], r.err)
    check("--dry-run prints the image the Deployment would run",
          f"image: {acr}.azurecr.io/ai-service:{SOURCE['sha']}" in r.out, r.out)

    w = World(root, "dry-existing")
    w.edit_az(lambda s: s["registries"].update({"myResourceGroup/storeacr": {
        "loginServer": "storeacr.azurecr.io", "sku": "Basic", "repositories": {}}}))
    r = w.run("--dry-run")
    check("--dry-run with an existing registry prints check-acr and the attach, runs neither",
          r.rc == 0 and "would run: az aks check-acr --resource-group myResourceGroup --name myAKSCluster --acr "
          "storeacr.azurecr.io" in r.err and "would run: az aks update --resource-group myResourceGroup --name "
          "myAKSCluster --attach-acr storeacr" in r.err and r.find("az", "aks", "check-acr") < 0
          and not acr_runs(r) and not w.az_state()["changes"], r.detail())


def test_teardown(w):
    r = w.run("--teardown")
    state = w.az_state()
    check("--teardown succeeds", r.rc == 0, r.detail())
    check("--teardown deletes the identity, its federated credential and role assignment",
          not state["identities"] and not state["federatedCredentials"] and not state["roleAssignments"], state)
    check("--teardown deletes the ServiceAccount, Deployment and Service",
          not any(w.k8s_objects("default", k) for k in ("serviceaccount", "deployment", "service", "pod")))
    delete = r.call("kubectl", "delete")
    check("--teardown also deletes the extras: autoscaler, disruption budget and network policy",
          {"horizontalpodautoscaler/ai-service", "poddisruptionbudget/ai-service", "networkpolicy/ai-service"} <= set(delete),
          delete)
    fic, role, ident = (r.find("az", "identity", "federated-credential", "delete"), r.find("az", "role", "assignment", "delete"),
                        r.find("az", "identity", "delete"))
    check("--teardown deletes the role assignment and credential before the identity",
          0 <= fic < ident and 0 <= role < ident, r.detail())
    r = w.run("--teardown")
    check("a second --teardown succeeds and deletes nothing in Azure",
          r.rc == 0 and not [c for c in r.changes() if c[0] == "az" and "delete" in c], r.detail())


def test_custom_names(root):
    w = World(root, "custom")
    r = w.run(SERVICE_ACCOUNT_NAMESPACE="store", SERVICE_ACCOUNT_NAME="ai-sa", IMAGE="myacr.azurecr.io/ai-service:1.2.3",
              MANAGED_IDENTITY_NAME="ai-id", FEDERATED_CREDENTIAL_NAME="ai-fic")
    applied = w.applied()
    fic = r.call("az", "identity", "federated-credential", "create")
    check("custom namespace, ServiceAccount, image and identity names are used throughout",
          r.rc == 0 and flag(fic, "--subject") == "system:serviceaccount:store:ai-sa" and flag(fic, "--identity-name") == "ai-id"
          and r.find("kubectl", "create", "namespace", "store") >= 0
          and "namespace: store" in applied and "namespace: default" not in applied
          and "serviceAccountName: ai-sa" in applied and "image: myacr.azurecr.io/ai-service:1.2.3" in applied
          and w.k8s_objects("store", "serviceaccount") == ["ai-sa.json"], r.detail() + applied)
    check("IMAGE skips the registry, the build and the attach",
          r.rc == 0 and not [c for c in r.calls if c[:2] == ["az", "acr"]]
          and r.find("az", "aks", "nodepool", "list") < 0 and r.find("az", "aks", "check-acr") < 0
          and not [c for c in r.calls if "--attach-acr" in c], r.detail())
    check("IMAGE is the image the Deployment runs", w.deployed_image("store") == "myacr.azurecr.io/ai-service:1.2.3")


def test_replication_retry(root):
    w = World(root, "replication")
    r = w.run(FAKE_PRINCIPAL_DELAY="2")
    attempts = [c for c in r.calls if c[:4] == ["az", "role", "assignment", "create"]]
    check("a role assignment for a not yet replicated identity is retried",
          r.rc == 0 and len(attempts) == 3 and "not replicated yet" in r.err, r.detail())


def test_recreated_cluster(w):
    w.edit_az(lambda s: s["federatedCredentials"]["myResourceGroup/myIdentity/myFederatedCredential"].update(
        issuer="https://eastus.oic.prod-aks.azure.com/old/"))
    r = w.run()
    upd = r.call("az", "identity", "federated-credential", "update")
    check("a federated credential with a stale issuer is updated to the cluster's",
          r.rc == 0 and upd and flag(upd, "--issuer") != "https://eastus.oic.prod-aks.azure.com/old/"
          and not r.find("az", "identity", "federated-credential", "create") >= 0, r.detail())


def test_cli(root):
    w = World(root, "cli")
    r = w.run("--help")
    check("--help prints the usage and the settings",
          r.rc == 0 and "Usage: k8s/setup.sh" in r.out and "AOAI_NAME" in r.out and not r.calls, r.detail())
    r = w.run("--frobnicate")
    check("an unknown flag is refused", r.rc != 0 and "Unknown argument '--frobnicate'" in r.err and not r.calls, r.detail())


def test_main_world(root):
    """The life of one setup: a first run, a second, --verify, --teardown."""
    w = World(root, "main")
    r = test_first_run(w)
    test_first_run_image(w, r)
    test_second_run(w)
    test_verify(w)
    test_verify_image(w)
    recreated = w.copy("recreated")
    in_parallel(lambda: test_recreated_cluster(recreated), lambda: test_teardown(w))


def run_scenarios(scenarios, jobs):
    """Runs the scenarios, each with worlds of its own, on `jobs` threads
    (each waits on its runs of setup.sh, so they overlap), and prints their
    lines in the order of the list, each as soon as it and those before it
    are done: the output is the same as if they ran one after the other. An
    exception in a scenario is raised again once all have been printed."""
    def run(scenario):
        OUTPUT.lines = []
        try:
            scenario()
            return OUTPUT.lines, None
        except Exception as err:  # raised again below, after the output
            return OUTPUT.lines, err

    outer = getattr(OUTPUT, "lines", None)  # set when run_scenarios runs in a scenario
    error = None
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for lines, err in pool.map(run, scenarios):
            if outer is not None:
                outer.extend(lines)
            else:
                for line in lines:
                    print(line, flush=True)
            error = error or err
    if error is not None:
        raise error


def in_parallel(*scenarios):
    """Runs parts of a scenario that are independent of each other (each on
    a world of its own) in parallel; their lines come in the order given."""
    run_scenarios(scenarios, jobs())


def jobs():
    """SETUP_TEST_JOBS, else the number of CPUs this process may use."""
    if os.environ.get("SETUP_TEST_JOBS"):
        return max(1, int(os.environ["SETUP_TEST_JOBS"]))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def start_fake_server():
    """Starts fake_server.py; returns it, its port and its token, or None
    when FAKE_SERVER=0 or it does not start (the wrappers then start each
    fake themselves)."""
    if os.environ.get("FAKE_SERVER") == "0":
        return None
    token = secrets.token_hex(16)
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "fake_server.py"),
                             *(os.path.join(FAKES, tool) for tool in ("az", "kubectl"))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, FAKE_SERVER_TOKEN=token))
    port = proc.stdout.readline().strip()
    if not port.isdigit():
        proc.kill()
        proc.wait()
        print("# the fake server did not start; each fake command starts Python", file=sys.stderr)
        return None
    return proc, int(port), token


def main():
    root = tempfile.mkdtemp(prefix="setup-test-")
    server = start_fake_server()
    try:
        no_az = make_bin(root, server[1:] if server else None)
        SOURCE["dir"] = make_source(root)
        SOURCE["sha"] = git(SOURCE["dir"], "rev-parse", "--short=12", "HEAD")
        # Printed in this order; started in it too, so the longest (the main world) starts at once.
        run_scenarios([
            lambda: test_cli(root),
            lambda: test_main_world(root),
            lambda: test_failing_step(root),
            lambda: test_prerequisites(root, no_az),
            lambda: test_dry_run(root),
            lambda: test_custom_names(root),
            lambda: test_replication_retry(root),
            lambda: test_architectures(root),
            lambda: test_registries(root),
            lambda: test_source_tags(root),
            lambda: test_fake_acr(root),
        ], jobs())
    finally:
        if server:
            server[0].stdin.close()  # it exits when its stdin closes
            server[0].wait()
        if os.environ.get("KEEP_TEST_STATE"):
            print(f"# state kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if all(RESULTS) else 1


REAL_KUBECTL = os.environ.get("FAKE_REAL_KUBECTL") or shutil.which("kubectl") or "/usr/bin/kubectl"

if __name__ == "__main__":
    sys.exit(main())
