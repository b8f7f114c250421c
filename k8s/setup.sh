#!/usr/bin/env bash
# k8s/setup.sh: deploy the ai-service to AKS with passwordless access to
# Azure OpenAI (Microsoft Entra Workload ID), following the seed article
# "Secure access to Azure OpenAI from Azure Kubernetes Service" step by step,
# and check or undo that deployment.
#
# Every step first looks whether its result already exists and skips it when
# it does, so running the script twice changes nothing the second time.
# Run `k8s/setup.sh --help` for the settings and flags.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: k8s/setup.sh [--dry-run] [--verbose] [--verify | --teardown | --help]

Deploys the ai-service to an AKS cluster with Microsoft Entra Workload ID:
enables the cluster's OIDC issuer and workload identity, creates a managed
identity, gives it "Cognitive Services OpenAI User" on the Azure OpenAI
account, federates it with the pod's ServiceAccount, builds this repository's
Dockerfile in your Azure Container Registry (ACR Tasks: no local Docker),
lets the cluster pull from that registry, and applies the ServiceAccount,
Deployment and Service from k8s/ with the values and that image filled in.
Steps whose result already exists are skipped, the build included.

Flags:
  --dry-run    print every command; run only those that read, none that change
               anything (combine with --teardown to preview it)
  --verbose    also print the commands that only read (VERBOSE=1 does the same)
  --verify     check every piece of the setup, print each problem with its
               fix, and exit non-zero if there is any
  --teardown   delete the Kubernetes objects, the federated credential, the
               role assignment and the managed identity
  --help       show this text

Settings (environment variables, defaults in brackets):
  RG_NAME                    resource group of the cluster and the identity
                             [myResourceGroup]
  AKS_NAME                   AKS cluster [the only cluster in RG_NAME]
  MANAGED_IDENTITY_NAME      user-assigned managed identity [myIdentity]
  FEDERATED_CREDENTIAL_NAME  its federated credential [myFederatedCredential]
  SERVICE_ACCOUNT_NAMESPACE  namespace of the ai-service [default]
  SERVICE_ACCOUNT_NAME       its ServiceAccount [ai-service-account]
  ACR_NAME                   Azure Container Registry to build in [the only
                             registry in RG_NAME, else a new Basic one named
                             after the cluster]; created in RG_NAME if missing
  IMAGE                      deploy this image instead: no build, no registry
                             [ACR_NAME's ai-service:<git commit>]
  PLATFORMS                  linux/amd64, linux/arm64 or both, comma-separated
                             [those of the cluster's Linux node pools]
  SOURCE_DIR                 the git clone to build [this script's repository]
  BUILD_TIMEOUT              seconds one platform's build may take [7200]
  AOAI_NAME                  Azure OpenAI account [the only OpenAI or AIServices
                             account in AOAI_RG_NAME]
  AOAI_RG_NAME               its resource group [RG_NAME]
  AOAI_DEPLOYMENT_NAME       chat model deployment [the first deployment that
                             supports chat completions]
  ROLLOUT_TIMEOUT            how long to wait for the pod to be ready [180s]

Example:
  RG_NAME=myResourceGroup AKS_NAME=myAKSCluster k8s/setup.sh
  k8s/setup.sh --verify
EOF
}

# --- Settings ---------------------------------------------------------------

RG_NAME=${RG_NAME:-myResourceGroup}
AKS_NAME=${AKS_NAME:-}
MANAGED_IDENTITY_NAME=${MANAGED_IDENTITY_NAME:-myIdentity}
FEDERATED_CREDENTIAL_NAME=${FEDERATED_CREDENTIAL_NAME:-myFederatedCredential}
SERVICE_ACCOUNT_NAMESPACE=${SERVICE_ACCOUNT_NAMESPACE:-default}
SERVICE_ACCOUNT_NAME=${SERVICE_ACCOUNT_NAME:-ai-service-account}
ACR_NAME=${ACR_NAME:-}
ACR_GIVEN=${ACR_NAME:+1}
IMAGE=${IMAGE:-}
PLATFORMS=${PLATFORMS:-}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-7200}
AOAI_NAME=${AOAI_NAME:-}
AOAI_RG_NAME=${AOAI_RG_NAME:-$RG_NAME}
AOAI_DEPLOYMENT_NAME=${AOAI_DEPLOYMENT_NAME:-}
ROLLOUT_TIMEOUT=${ROLLOUT_TIMEOUT:-180s}
# Seconds between attempts when Azure has not yet replicated a new identity.
RETRY_DELAY=${RETRY_DELAY:-10}

readonly ROLE_NAME="Cognitive Services OpenAI User"
readonly AUDIENCE="api://AzureADTokenExchange"
readonly APP=ai-service
readonly RERUN="run k8s/setup.sh"
SUBJECT="system:serviceaccount:${SERVICE_ACCOUNT_NAMESPACE}:${SERVICE_ACCOUNT_NAME}"
K8S_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SOURCE_DIR=${SOURCE_DIR:-$(dirname "$K8S_DIR")}
# Set when the user names the image: then nothing is built or attached.
IMAGE_GIVEN=${IMAGE:+1}
readonly REPOSITORY=ai-service

# The placeholders in k8s/*.yaml that this script fills in.
readonly PH_CLIENT_ID="00000000-0000-0000-0000-000000000000"
readonly PH_ENDPOINT="https://YOUR-AZURE-OPENAI-NAME.openai.azure.com/"
readonly PH_DEPLOYMENT="YOUR-CHAT-DEPLOYMENT"
readonly PH_IMAGE="YOUR-REGISTRY.azurecr.io/ai-service:YOUR-TAG"
readonly PH_NAMESPACE="namespace: default"
readonly PH_SERVICE_ACCOUNT="ai-service-account"

# --- Output and command helpers ---------------------------------------------

say() { printf '==> %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# Prints a command the way one would type it, quoting only where needed.
show() {
  local out="" arg safe='^[A-Za-z0-9_./:=@%+,-]+$' q="'" dq_safe='^[^"$`\\!]*$'
  for arg in "$@"; do
    if [[ $arg =~ $safe ]]; then
      out+="$arg "
    elif [[ $arg != *"'"* ]]; then
      out+="'$arg' "
    elif [[ $arg =~ $dq_safe ]]; then
      out+="\"$arg\" "
    else
      out+="'${arg//$q/$q\\$q$q}' "
    fi
  done
  printf '%s\n' "${out% }"
}

DRY_RUN=0
VERBOSE=${VERBOSE:-0}
dry() { [[ $DRY_RUN == 1 ]]; }

# Runs a command that only reads; prints it first under --dry-run or
# --verbose. Read commands also run under --dry-run, so the preview shows
# what really exists.
q() {
  if dry || [[ $VERBOSE == 1 ]]; then
    printf '    + %s\n' "$(show "$@")" >&2
  fi
  "$@"
}

# Runs a command that changes something, after printing it; under --dry-run
# only prints it.
change() {
  if dry; then
    printf '    [dry-run] would run: %s\n' "$(show "$@")" >&2
    return 0
  fi
  printf '    + %s\n' "$(show "$@")" >&2
  "$@"
}

is_true() { [[ $1 == true || $1 == True ]]; }

# Counts the non-empty lines of $1.
count_lines() {
  local n=0 line
  while IFS= read -r line; do
    [[ -n $line ]] && n=$((n + 1))
  done <<<"$1"
  printf '%s\n' "$n"
}

# With -o tsv, az prints each element of a top-level list on its own line
# and the elements of a nested list on one line, tab-separated: queries
# that read several fields of one object are written "[[a, b]]" or
# "[?name=='x'].[a, b]" to get one line.
#
# Existence checks use `list` with a JMESPath filter rather than `show`:
# `show` fails both for "not found" and for real errors (network, login,
# permissions), while `list` answers an empty result only for "not found".

# --- Prerequisites ----------------------------------------------------------

require_tools() {
  command -v az >/dev/null 2>&1 ||
    die "The Azure CLI (az) is not on PATH. Install it (https://learn.microsoft.com/cli/azure/install-azure-cli), run 'az login', then run this script again."
  command -v kubectl >/dev/null 2>&1 ||
    die "kubectl is not on PATH. Install it with 'az aks install-cli' (or your package manager), then run this script again."
}

SUBSCRIPTION_ID=""
require_login() {
  local sub name
  sub=$(q az account show --query "[[name, id]]" -o tsv) ||
    die "The Azure CLI is not logged in. Run 'az login' (and 'az account set --subscription <id>' to pick the subscription), then run this script again."
  IFS=$'\t' read -r name SUBSCRIPTION_ID <<<"$sub"
  say "Subscription: $name ($SUBSCRIPTION_ID)"
}

# Sets AKS_NAME, finding the cluster the way the seed does when it is unset.
find_cluster() {
  local names
  if [[ -n $AKS_NAME ]]; then
    names=$(q az aks list --resource-group "$RG_NAME" --query "[?name=='$AKS_NAME'].name" -o tsv) ||
      die "Could not list the AKS clusters of resource group '$RG_NAME' (see the az error above)."
    [[ -n $names ]] ||
      die "AKS cluster '$AKS_NAME' was not found in resource group '$RG_NAME'. Set AKS_NAME and RG_NAME to your cluster's name and resource group ('az aks list -o table' lists them)."
    return 0
  fi
  names=$(q az aks list --resource-group "$RG_NAME" --query "[].name" -o tsv) ||
    die "Could not list the AKS clusters of resource group '$RG_NAME' (see the az error above)."
  case $(count_lines "$names") in
    0) die "Resource group '$RG_NAME' holds no AKS cluster. Set RG_NAME (and AKS_NAME) to the cluster's resource group ('az aks list -o table' lists them)." ;;
    1) AKS_NAME=$names ;;
    *) die "Resource group '$RG_NAME' holds several AKS clusters ($(echo "$names" | paste -sd, -)). Set AKS_NAME to the one to use." ;;
  esac
}

# Sets AOAI_NAME and AOAI_ID: the named account, or the only Azure OpenAI
# (kind OpenAI or AIServices) account of AOAI_RG_NAME.
find_openai() {
  local rows query
  if [[ -n $AOAI_NAME ]]; then
    query="[?name=='$AOAI_NAME'].[name, id]"
  else
    query="[?kind=='OpenAI' || kind=='AIServices'].[name, id]"
  fi
  rows=$(q az resource list --resource-group "$AOAI_RG_NAME" --resource-type Microsoft.CognitiveServices/accounts --query "$query" -o tsv) ||
    die "Could not list the Cognitive Services accounts of resource group '$AOAI_RG_NAME' (see the az error above)."
  case $(count_lines "$rows") in
    0)
      if [[ -n $AOAI_NAME ]]; then
        die "Azure OpenAI account '$AOAI_NAME' was not found in resource group '$AOAI_RG_NAME'. Set AOAI_NAME and AOAI_RG_NAME to your account's name and resource group."
      fi
      die "Resource group '$AOAI_RG_NAME' holds no Azure OpenAI account. Create one (or set AOAI_RG_NAME, and AOAI_NAME, to where yours is), then run this script again."
      ;;
    1) IFS=$'\t' read -r AOAI_NAME AOAI_ID <<<"$rows" ;;
    *) die "Resource group '$AOAI_RG_NAME' holds several Azure OpenAI accounts ($(cut -f1 <<<"$rows" | paste -sd, -)). Set AOAI_NAME to the one to use." ;;
  esac
}

preflight() {
  require_tools
  require_login
  local exists
  exists=$(q az group exists --name "$RG_NAME") ||
    die "Could not look up resource group '$RG_NAME' (see the az error above)."
  is_true "$exists" ||
    die "Resource group '$RG_NAME' does not exist in this subscription. Set RG_NAME to the resource group of your AKS cluster (or pick another subscription with 'az account set')."
  find_cluster
  find_openai
  say "Cluster: $AKS_NAME (resource group $RG_NAME); Azure OpenAI account: $AOAI_NAME (resource group $AOAI_RG_NAME)"
}

# Prints "clientId<TAB>principalId" of the managed identity, or nothing.
identity_ids() {
  q az identity list --resource-group "$RG_NAME" \
    --query "[?name=='$MANAGED_IDENTITY_NAME'].[clientId, principalId]" -o tsv
}

# Prints "issuer<TAB>subject" of the federated credential, or nothing.
federated_credential() {
  q az identity federated-credential list --identity-name "$MANAGED_IDENTITY_NAME" --resource-group "$RG_NAME" \
    --query "[?name=='$FEDERATED_CREDENTIAL_NAME'].[issuer, subject]" -o tsv
}

# Prints how many "Cognitive Services OpenAI User" assignments the principal
# has on the Azure OpenAI account. Filtering on principalId, rather than
# passing --assignee, spares a Microsoft Graph look-up that needs directory
# read permission.
role_assignment_count() {
  q az role assignment list --scope "$AOAI_ID" --role "$ROLE_NAME" \
    --query "[?principalId=='$1'] | length(@)" -o tsv
}

# --- Manifests ----------------------------------------------------------------

# Prints k8s/ rendered by kustomize with the placeholders filled in.
# Arguments: client id, endpoint, deployment name.
render_manifests() {
  local out
  out=$(q kubectl kustomize "$K8S_DIR") ||
    die "Could not render the manifests in $K8S_DIR with 'kubectl kustomize' (see the error above)."
  # Quoted patterns and replacements make these literal substitutions.
  out=${out//"$PH_CLIENT_ID"/"$1"}
  out=${out//"$PH_ENDPOINT"/"$2"}
  out=${out//"$PH_DEPLOYMENT"/"$3"}
  out=${out//"$PH_IMAGE"/"$IMAGE"}
  out=${out//"$PH_NAMESPACE"/"namespace: $SERVICE_ACCOUNT_NAMESPACE"}
  out=${out//"$PH_SERVICE_ACCOUNT"/"$SERVICE_ACCOUNT_NAME"}
  printf '%s\n' "$out"
}

# --- Image ----------------------------------------------------------------------
#
# The image is this repository's Dockerfile, built in the user's Azure
# Container Registry by ACR Tasks, so no Docker engine is needed here and the
# cluster pulls from a registry it is attached to.
#
# Why `az acr run` with a task file rather than `az acr build`:
#  - the Dockerfile uses BuildKit (`RUN --mount=type=cache`), and ACR Tasks
#    build with BuildKit only when a task step sets DOCKER_BUILDKIT=1 ("ACR
#    Tasks reference: YAML", build step); `az acr build` cannot set it
#    (Azure/acr#721), and the classic builder rejects `--mount`;
#  - a task step times out after 600 s unless told otherwise, too short for
#    a cold Rust build;
#  - `az acr run` uploads a local context filtered by its .dockerignore and,
#    unlike `az acr build`, does not add the Dockerfile back, and our
#    .dockerignore excludes `Dockerfile`. So the context is staged in a
#    temporary directory with the Dockerfile renamed and given its own
#    <name>.dockerignore (which BuildKit prefers to .dockerignore), so the
#    image gets exactly what a local `docker build` would put in it.
# Several architectures: a task builds one platform per `docker build
# --platform` step, and on an agent of another architecture that needs
# emulation, which is slow for a Rust build if the agent has it at all. So
# each platform is its own run on an agent of that platform (`az acr run
# --platform`), tagged <tag>-<arch>, and a last run joins them under <tag>
# with `docker manifest create` and `docker manifest push --purge`: the
# multi-arch recipe of "Multi-architecture images in your Azure container
# registry" (learn.microsoft.com). `az acr build` builds one platform too.

ACR_NEW=0
ACR_LOGIN_SERVER=""
IMAGE_TAG=""
BUILD_PLATFORMS=()
STAGE=""
# The Dockerfile's name in the staged context (see above).
readonly STAGED_DOCKERFILE=ai-service.Dockerfile
# What the image tag looks at: the whole clone but k8s/, which is not in the
# image (.dockerignore) and whose placeholders one may fill in by hand.
readonly CONTEXT_PATHS=(. ':(exclude)k8s')

# Sets IMAGE_TAG: the 12-character git commit of SOURCE_DIR, plus
# "-dirty-<8 hex>" when the tree has uncommitted changes. The suffix hashes
# those changes (the diff against HEAD and the untracked files), so a
# rebuilt dirty tree gets a new tag whenever its content changes and the
# same tag when it does not. A plain "-dirty" tag, rebuilt each time, would
# leave the Deployment unchanged (no rollout) and the nodes on their cached
# copy of the previous build.
source_tag() {
  local sha digest
  command -v git >/dev/null 2>&1 ||
    die "git is not on PATH; the image tag is the git commit. Install git, or set IMAGE to an image you built, then run this script again."
  [[ -f $SOURCE_DIR/Dockerfile ]] ||
    die "SOURCE_DIR '$SOURCE_DIR' has no Dockerfile. Set SOURCE_DIR to a clone of the ai-service repository (or IMAGE to an image you built), then run this script again."
  sha=$(git -C "$SOURCE_DIR" rev-parse --short=12 HEAD) ||
    die "Could not read the git commit of SOURCE_DIR '$SOURCE_DIR' (see the git error above), which the image tag is made of. Run the script from a git clone with a commit, or set IMAGE to an image you built, then run this script again."
  IMAGE_TAG=$sha
  if [[ -n $(git -C "$SOURCE_DIR" status --porcelain -- "${CONTEXT_PATHS[@]}") ]]; then
    digest=$(tree_digest) || die "Could not hash the uncommitted changes in '$SOURCE_DIR' (see the git error above)."
    IMAGE_TAG="$sha-dirty-$digest"
  fi
}

# Prints 8 hex digits that change with the uncommitted content of SOURCE_DIR.
tree_digest() {
  local f
  {
    git -C "$SOURCE_DIR" diff HEAD --binary -- "${CONTEXT_PATHS[@]}"
    git -C "$SOURCE_DIR" ls-files -z --others --exclude-standard -- "${CONTEXT_PATHS[@]}" |
      while IFS= read -r -d '' f; do
        printf '%s\0' "$f"
        cat -- "$SOURCE_DIR/$f"
      done
  } | git hash-object --stdin | cut -c1-8
}

# Prints the registry name this script gives a cluster's registry: the
# cluster's name in lowercase letters and digits (registry names allow
# nothing else) and "acr" plus a checksum of subscription, resource group
# and cluster, because registry names are global. The same cluster always
# gets the same name, so a rerun finds the registry it created.
registry_name_for_cluster() {
  local base crc
  base=$(printf '%s' "$AKS_NAME" | LC_ALL=C tr -cd '[:alnum:]' | LC_ALL=C tr '[:upper:]' '[:lower:]')
  crc=$(printf '%s' "$SUBSCRIPTION_ID/$RG_NAME/$AKS_NAME" | cksum)
  printf '%.39sacr%08x\n' "$base" "${crc%% *}"
}

# Stops unless ACR_NAME is free to create.
check_registry_name() {
  local available
  available=$(q az acr check-name --name "$ACR_NAME" --query nameAvailable -o tsv) ||
    die "Could not check whether the registry name '$ACR_NAME' is free (see the az error above)."
  is_true "$available" ||
    die "The registry name '$ACR_NAME' is taken (registry names are global across Azure). Set ACR_NAME to a free name of 5 to 50 letters and digits, or to your registry's name, then run this script again."
}

# Sets ACR_NAME and ACR_LOGIN_SERVER, and ACR_NEW=1 when the registry is
# still to be created. Reads only.
find_registry() {
  local rows
  if [[ -n $ACR_NAME ]]; then
    ACR_NAME=$(LC_ALL=C tr '[:upper:]' '[:lower:]' <<<"$ACR_NAME")
    [[ $ACR_NAME =~ ^[a-z0-9]{5,50}$ ]] ||
      die "ACR_NAME '$ACR_NAME' is not a registry name: use 5 to 50 letters and digits, then run this script again."
    rows=$(q az acr list --query "[?name=='$ACR_NAME'].loginServer" -o tsv) ||
      die "Could not list the container registries of the subscription (see the az error above)."
    if [[ -n $rows ]]; then
      ACR_LOGIN_SERVER=$rows
      return 0
    fi
  else
    rows=$(q az acr list --resource-group "$RG_NAME" --query "[].[name, loginServer]" -o tsv) ||
      die "Could not list the container registries of resource group '$RG_NAME' (see the az error above)."
    case $(count_lines "$rows") in
      0) ACR_NAME=$(registry_name_for_cluster) ;;
      1)
        IFS=$'\t' read -r ACR_NAME ACR_LOGIN_SERVER <<<"$rows"
        return 0
        ;;
      *) die "Resource group '$RG_NAME' holds several container registries ($(cut -f1 <<<"$rows" | paste -sd, -)). Set ACR_NAME to the one to build the image in, then run this script again." ;;
    esac
  fi
  check_registry_name
  ACR_NEW=1
  ACR_LOGIN_SERVER="$ACR_NAME.azurecr.io"
}

# Sets BUILD_PLATFORMS after the cluster's Linux node pools: linux/arm64 for
# a pool of Arm64 VMs, linux/amd64 for the others. An Arm64 pool runs an
# Arm64 node image, whose version says so (AKSUbuntu-2204gen2arm64containerd-
# ..., AKSAzureLinux-V2gen2arm64-...). The VM size would hint too (Arm sizes
# carry a "p": Standard_D4ps_v5), but reading size names is guesswork; the
# node image is what the pool runs.
find_platforms() {
  local rows name version amd=0 arm=0 p list=()
  BUILD_PLATFORMS=()
  if [[ -n $PLATFORMS ]]; then
    IFS=, read -r -a list <<<"$PLATFORMS"
    for p in "${list[@]}"; do
      case $p in
        linux/amd64) amd=1 ;;
        linux/arm64) arm=1 ;;
        *) die "PLATFORMS names '$p': use linux/amd64, linux/arm64 or both, separated by a comma, then run this script again." ;;
      esac
    done
  else
    rows=$(q az aks nodepool list --resource-group "$RG_NAME" --cluster-name "$AKS_NAME" \
      --query "[?osType=='Linux'].[name, nodeImageVersion]" -o tsv) ||
      die "Could not list the node pools of cluster '$AKS_NAME' (see the az error above)."
    while IFS=$'\t' read -r name version; do
      [[ -n $name ]] || continue
      case $version in
        *arm64*) arm=1 ;;
        *) amd=1 ;;
      esac
    done <<<"$rows"
  fi
  if [[ $amd == 1 || $arm == 0 ]]; then BUILD_PLATFORMS+=(linux/amd64); fi
  if [[ $arm == 1 ]]; then BUILD_PLATFORMS+=(linux/arm64); fi
}

# Decides, reading only, which image to deploy and where to build it, so a
# missing git clone or an ambiguous registry stops the script before any
# change. Sets IMAGE.
image_preflight() {
  if [[ $IMAGE_GIVEN == 1 ]]; then
    say "Image: $IMAGE (from IMAGE: nothing is built)"
    return 0
  fi
  [[ $BUILD_TIMEOUT =~ ^[1-9][0-9]*$ ]] ||
    die "BUILD_TIMEOUT '$BUILD_TIMEOUT' is not a number of seconds. Set it to one (for example 7200), then run this script again."
  source_tag
  find_registry
  find_platforms
  IMAGE="$ACR_LOGIN_SERVER/$REPOSITORY:$IMAGE_TAG"
  local where="registry $ACR_NAME"
  [[ $ACR_NEW == 0 ]] || where="registry $ACR_NAME, to be created"
  say "Image: $IMAGE for ${BUILD_PLATFORMS[*]} ($where), from $SOURCE_DIR"
}

# Copies what git sees in SOURCE_DIR (tracked and untracked files, not the
# ignored ones such as target/ or .env) to STAGE, the Dockerfile renamed to
# STAGED_DOCKERFILE with an ignore file of its own: .dockerignore plus the
# files this script adds.
stage_context() {
  STAGE="$WORK_DIR/context"
  mkdir -p "$STAGE"
  (
    cd "$SOURCE_DIR"
    git ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do
        if [[ -e $f || -L $f ]]; then printf '%s\0' "$f"; fi # a deleted file stays listed until committed
      done |
      tar --null -T - -cf -
  ) | tar -C "$STAGE" -xf - ||
    die "Could not copy '$SOURCE_DIR' into a build context in $STAGE (see the error above)."
  mv "$STAGE/Dockerfile" "$STAGE/$STAGED_DOCKERFILE"
  {
    if [[ -f $STAGE/.dockerignore ]]; then cat "$STAGE/.dockerignore"; fi
    printf '%s\n' "# Added by k8s/setup.sh for ACR Tasks:" "$STAGED_DOCKERFILE" "$STAGED_DOCKERFILE.dockerignore" "acr-task-*.yaml"
  } >"$STAGE/$STAGED_DOCKERFILE.dockerignore"
}

# Prints the ACR task that builds and pushes one platform: build_task PLATFORM TAG.
build_task() {
  cat <<YAML
version: v1.1.0
stepTimeout: $BUILD_TIMEOUT
steps:
  - build: -t \$Registry/$REPOSITORY:$2 --platform $1 -f $STAGED_DOCKERFILE .
    env: ["DOCKER_BUILDKIT=1"]
  - push: ["\$Registry/$REPOSITORY:$2"]
YAML
}

# Prints the ACR task that joins the per-platform images under IMAGE_TAG.
manifest_task() {
  local p refs=""
  for p in "${BUILD_PLATFORMS[@]}"; do refs+=" \$Registry/$REPOSITORY:$IMAGE_TAG-${p#linux/}"; done
  cat <<YAML
version: v1.1.0
steps:
  - cmd: docker manifest create \$Registry/$REPOSITORY:$IMAGE_TAG$refs
  - cmd: docker manifest push --purge \$Registry/$REPOSITORY:$IMAGE_TAG
YAML
}

# Prints a task file under --dry-run or --verbose: show_task FILE.
show_task() {
  if dry || [[ $VERBOSE == 1 ]]; then
    note "$(basename "$1"):"
    sed 's/^/      /' "$1" >&2
  fi
}

readonly TASKS_UNAVAILABLE="If the error is TasksOperationsNotAllowed, this subscription cannot run ACR Tasks (Azure pauses them for free-credit subscriptions): build the image elsewhere and set IMAGE."

# Builds one platform in the registry: build_platform PLATFORM TAG.
build_platform() {
  local task="acr-task-${1#linux/}.yaml"
  [[ -n $STAGE ]] || stage_context
  build_task "$1" "$2" >"$STAGE/$task"
  show_task "$STAGE/$task"
  change az acr run --registry "$ACR_NAME" --platform "$1" --file "$task" --timeout "$BUILD_TIMEOUT" "$STAGE" ||
    die "Building $REPOSITORY:$2 for $1 in registry '$ACR_NAME' failed (see the log above). A compile error is the code's; a timeout wants a larger BUILD_TIMEOUT. $TASKS_UNAVAILABLE"
}

# Creates the registry if needed and builds IMAGE in it unless it has the tag.
build_image() {
  local tags="" repos login p arch
  if [[ $ACR_NEW == 1 ]]; then
    if [[ $ACR_GIVEN == 1 ]]; then
      note "registry $ACR_NAME does not exist: creating it in $RG_NAME"
    else
      note "resource group $RG_NAME has no container registry: creating $ACR_NAME (named after the cluster; set ACR_NAME to use another)"
    fi
    login=$(change az acr create --resource-group "$RG_NAME" --name "$ACR_NAME" --sku Basic --query loginServer -o tsv) ||
      die "Creating container registry '$ACR_NAME' failed (see the az error above). You need Contributor on resource group '$RG_NAME'."
    if [[ -n $login ]]; then
      ACR_LOGIN_SERVER=$login
      IMAGE="$ACR_LOGIN_SERVER/$REPOSITORY:$IMAGE_TAG"
    fi
  else
    repos=$(q az acr repository list --name "$ACR_NAME" --query "[?@=='$REPOSITORY']" -o tsv) ||
      die "Could not list the repositories of registry '$ACR_NAME' (see the az error above). You need AcrPull, Reader or Contributor on it."
    if [[ -n $repos ]]; then
      tags=$(q az acr repository show-tags --name "$ACR_NAME" --repository "$REPOSITORY" -o tsv) ||
        die "Could not list the tags of $REPOSITORY in registry '$ACR_NAME' (see the az error above)."
    fi
  fi
  if grep -qxF -- "$IMAGE_TAG" <<<"$tags"; then
    note "$IMAGE is already in the registry, skipping the build"
    return 0
  fi
  note "building $SOURCE_DIR at ${IMAGE_TAG} in ACR Tasks (a first Rust build takes several minutes)"
  if [[ ${#BUILD_PLATFORMS[@]} == 1 ]]; then
    build_platform "${BUILD_PLATFORMS[0]}" "$IMAGE_TAG"
    return 0
  fi
  for p in "${BUILD_PLATFORMS[@]}"; do
    arch=${p#linux/}
    if grep -qxF -- "$IMAGE_TAG-$arch" <<<"$tags"; then
      note "$REPOSITORY:$IMAGE_TAG-$arch is already in the registry, skipping its build"
      continue
    fi
    build_platform "$p" "$IMAGE_TAG-$arch"
  done
  manifest_task >"$WORK_DIR/acr-task-manifest.yaml"
  show_task "$WORK_DIR/acr-task-manifest.yaml"
  change az acr run --registry "$ACR_NAME" --file "$WORK_DIR/acr-task-manifest.yaml" /dev/null ||
    die "Joining the ${BUILD_PLATFORMS[*]} images under $IMAGE failed (see the log above). $TASKS_UNAVAILABLE"
}

# Lets the cluster's kubelet identity pull from the registry, unless
# `az aks check-acr` finds that it already can. check-acr runs a short-lived
# pod in the cluster, so --dry-run prints it instead of running it.
grant_pull() {
  local attach=(az aks update --resource-group "$RG_NAME" --name "$AKS_NAME" --attach-acr "$ACR_NAME" -o none)
  local out
  if dry; then
    if [[ $ACR_NEW == 0 ]]; then
      change az aks check-acr --resource-group "$RG_NAME" --name "$AKS_NAME" --acr "$ACR_LOGIN_SERVER"
      note "and only if it reports that the cluster cannot pull:"
    fi
    change "${attach[@]}"
    return 0
  fi
  if [[ $ACR_NEW == 0 ]]; then
    note "checking with az aks check-acr (it runs a short-lived pod in the cluster)"
    if out=$(q az aks check-acr --resource-group "$RG_NAME" --name "$AKS_NAME" --acr "$ACR_LOGIN_SERVER" 2>&1) &&
      [[ $out == *"can pull images from"* ]]; then
      note "the cluster can already pull from $ACR_LOGIN_SERVER, skipping"
      return 0
    fi
    printf '%s\n' "$out" | sed 's/^/      /' >&2
  fi
  change "${attach[@]}" ||
    die "Attaching registry '$ACR_NAME' to cluster '$AKS_NAME' failed (see the az error above). --attach-acr gives the cluster's kubelet identity AcrPull on the registry, which needs Owner, User Access Administrator or Role Based Access Control Administrator on it."
}

# --- setup --------------------------------------------------------------------

do_setup() {
  preflight

  # Entra authentication only works on an account with a custom subdomain
  # (https://<name>.openai.azure.com/), not on a regional endpoint.
  local subdomain
  subdomain=$(q az cognitiveservices account show --name "$AOAI_NAME" --resource-group "$AOAI_RG_NAME" \
    --query properties.customSubDomainName -o tsv) ||
    die "Could not read Azure OpenAI account '$AOAI_NAME' (see the az error above)."
  [[ -n $subdomain ]] ||
    die "Azure OpenAI account '$AOAI_NAME' has no custom subdomain, which Microsoft Entra authentication requires. Add one with 'az cognitiveservices account update --name $AOAI_NAME --resource-group $AOAI_RG_NAME --custom-domain $AOAI_NAME' (it cannot be changed later), then run this script again."
  image_preflight

  say "1/11 Enable the OIDC issuer and workload identity on cluster $AKS_NAME"
  local enabled
  enabled=$(q az aks show --resource-group "$RG_NAME" --name "$AKS_NAME" \
    --query "oidcIssuerProfile.enabled && securityProfile.workloadIdentity.enabled" -o tsv) ||
    die "Could not read cluster '$AKS_NAME' (see the az error above)."
  if is_true "$enabled"; then
    note "already enabled, skipping"
  else
    change az aks update --resource-group "$RG_NAME" --name "$AKS_NAME" \
      --enable-oidc-issuer --enable-workload-identity -o none ||
      die "Enabling the OIDC issuer and workload identity on '$AKS_NAME' failed (see the az error above). You need Contributor on the cluster; an operation already running on it must finish first."
  fi

  say "2/11 Read the cluster's OIDC issuer URL"
  local issuer
  issuer=$(q az aks show --resource-group "$RG_NAME" --name "$AKS_NAME" \
    --query oidcIssuerProfile.issuerUrl -o tsv) ||
    die "Could not read the OIDC issuer URL of '$AKS_NAME' (see the az error above)."
  if [[ -z $issuer ]]; then
    dry || die "Cluster '$AKS_NAME' reports no OIDC issuer URL although the issuer was enabled. Run 'az aks update --resource-group $RG_NAME --name $AKS_NAME --enable-oidc-issuer' and then this script again."
    issuer="<OIDC issuer URL of $AKS_NAME>"
  fi
  note "issuer: $issuer"

  say "3/11 Create the managed identity $MANAGED_IDENTITY_NAME"
  local ids client_id principal_id identity_is_new=0
  ids=$(identity_ids) ||
    die "Could not list the managed identities of resource group '$RG_NAME' (see the az error above)."
  if [[ -n $ids ]]; then
    note "already exists, skipping"
  else
    identity_is_new=1
    ids=$(change az identity create --resource-group "$RG_NAME" --name "$MANAGED_IDENTITY_NAME" \
      --query "[[clientId, principalId]]" -o tsv) ||
      die "Creating managed identity '$MANAGED_IDENTITY_NAME' failed (see the az error above). You need Managed Identity Contributor (or Contributor) on resource group '$RG_NAME'."
    dry && ids="<client id of $MANAGED_IDENTITY_NAME>"$'\t'"<principal id of $MANAGED_IDENTITY_NAME>"
  fi
  IFS=$'\t' read -r client_id principal_id <<<"$ids"
  note "client id: $client_id, principal id: $principal_id"

  say "4/11 Find the Azure OpenAI resource id"
  note "$AOAI_ID"

  say "5/11 Give the identity '$ROLE_NAME' on $AOAI_NAME"
  local count=0
  if [[ $identity_is_new == 0 ]]; then
    count=$(role_assignment_count "$principal_id") ||
      die "Could not list the role assignments on '$AOAI_NAME' (see the az error above)."
  fi
  if [[ ${count:-0} != 0 ]]; then
    note "already assigned, skipping"
  else
    assign_role "$principal_id"
  fi

  say "6/11 Federate the identity with ServiceAccount $SERVICE_ACCOUNT_NAMESPACE/$SERVICE_ACCOUNT_NAME"
  local fic="" fic_issuer fic_subject
  if [[ $identity_is_new == 0 ]]; then
    fic=$(federated_credential) ||
      die "Could not list the federated credentials of '$MANAGED_IDENTITY_NAME' (see the az error above)."
  fi
  if [[ -z $fic ]]; then
    change az identity federated-credential create --name "$FEDERATED_CREDENTIAL_NAME" \
      --identity-name "$MANAGED_IDENTITY_NAME" --resource-group "$RG_NAME" \
      --issuer "$issuer" --subject "$SUBJECT" --audience "$AUDIENCE" -o none ||
      die "Creating federated credential '$FEDERATED_CREDENTIAL_NAME' failed (see the az error above). You need Managed Identity Contributor (or Contributor) on '$MANAGED_IDENTITY_NAME'."
  else
    IFS=$'\t' read -r fic_issuer fic_subject <<<"$fic"
    if [[ $fic_issuer == "$issuer" && $fic_subject == "$SUBJECT" ]]; then
      note "already exists with this issuer and subject, skipping"
    else
      # A recreated cluster has a new issuer: trust it instead of the old one.
      note "exists with issuer '$fic_issuer' and subject '$fic_subject': updating it"
      change az identity federated-credential update --name "$FEDERATED_CREDENTIAL_NAME" \
        --identity-name "$MANAGED_IDENTITY_NAME" --resource-group "$RG_NAME" \
        --issuer "$issuer" --subject "$SUBJECT" --audience "$AUDIENCE" -o none ||
        die "Updating federated credential '$FEDERATED_CREDENTIAL_NAME' failed (see the az error above)."
    fi
  fi

  say "7/11 Build the image $IMAGE"
  if [[ $IMAGE_GIVEN == 1 ]]; then
    note "IMAGE is set, skipping (make sure the cluster can pull it)"
  else
    build_image
  fi

  if [[ $IMAGE_GIVEN == 1 ]]; then
    say "8/11 Let cluster $AKS_NAME pull from the registry"
    note "IMAGE is set, skipping"
  else
    say "8/11 Let cluster $AKS_NAME pull from registry $ACR_NAME"
    grant_pull
  fi

  say "9/11 Get the cluster's credentials for kubectl"
  # --overwrite-existing: a rerun must not stop at "context already exists".
  change az aks get-credentials --resource-group "$RG_NAME" --name "$AKS_NAME" --overwrite-existing ||
    die "Could not get the credentials of cluster '$AKS_NAME' (see the az error above). You need the Azure Kubernetes Service Cluster User role on it."

  say "10/11 Read the Azure OpenAI endpoint and chat deployment"
  local endpoint deployment
  endpoint=$(q az cognitiveservices account show --name "$AOAI_NAME" --resource-group "$AOAI_RG_NAME" \
    --query properties.endpoint -o tsv) ||
    die "Could not read the endpoint of Azure OpenAI account '$AOAI_NAME' (see the az error above)."
  [[ -n $endpoint ]] || die "Azure OpenAI account '$AOAI_NAME' reports no endpoint. Check the account in the Azure portal."
  deployment=$AOAI_DEPLOYMENT_NAME
  if [[ -z $deployment ]]; then
    # The seed takes "[0].name"; the first deployment may be an image or
    # embeddings model, so prefer one that can chat.
    deployment=$(q az cognitiveservices account deployment list --name "$AOAI_NAME" --resource-group "$AOAI_RG_NAME" \
      --query "[?properties.capabilities.chatCompletion=='true'] | [0].name" -o tsv) ||
      die "Could not list the model deployments of '$AOAI_NAME' (see the az error above)."
  fi
  if [[ -z $deployment ]]; then
    deployment=$(q az cognitiveservices account deployment list --name "$AOAI_NAME" --resource-group "$AOAI_RG_NAME" \
      --query "[0].name" -o tsv) ||
      die "Could not list the model deployments of '$AOAI_NAME' (see the az error above)."
    [[ -n $deployment ]] ||
      die "Azure OpenAI account '$AOAI_NAME' has no model deployment. Deploy a chat model (for example gpt-5-mini) in the Azure AI Foundry portal or with 'az cognitiveservices account deployment create', then run this script again."
    note "no deployment reports chat completions; using the first one. Set AOAI_DEPLOYMENT_NAME to choose another."
  fi
  note "endpoint: $endpoint, deployment: $deployment"

  say "11/11 Apply the ServiceAccount, Deployment and Service"
  local manifests
  manifests=$(render_manifests "$client_id" "$endpoint" "$deployment")
  case $manifests in
    *YOUR-* | *"$PH_CLIENT_ID"*) die "A placeholder in $K8S_DIR was left unfilled; the manifests and this script disagree." ;;
  esac
  if dry; then
    note "the manifests that would be applied:"
    printf '%s\n' "$manifests"
    change kubectl apply -f -
    say "Dry run finished: nothing was changed."
    return 0
  fi
  local ns
  ns=$(q kubectl get namespace "$SERVICE_ACCOUNT_NAMESPACE" -o name --ignore-not-found) ||
    die "kubectl cannot reach cluster '$AKS_NAME' (see the error above). If the cluster uses Microsoft Entra authentication, install kubelogin ('az aks install-cli') and run 'kubelogin convert-kubeconfig -l azurecli', then run this script again."
  if [[ -z $ns ]]; then
    change kubectl create namespace "$SERVICE_ACCOUNT_NAMESPACE" ||
      die "Could not create namespace '$SERVICE_ACCOUNT_NAMESPACE' (see the error above)."
  fi
  local file
  file="$WORK_DIR/ai-service.yaml"
  printf '%s\n' "$manifests" >"$file"
  change kubectl apply -f "$file" ||
    die "kubectl apply failed (see the error above); the manifests are in $K8S_DIR."
  q kubectl rollout status "deployment/$APP" --namespace "$SERVICE_ACCOUNT_NAMESPACE" --timeout "$ROLLOUT_TIMEOUT" ||
    die "The ai-service did not become ready within $ROLLOUT_TIMEOUT. Look at 'kubectl describe pod --selector app=$APP --namespace $SERVICE_ACCOUNT_NAMESPACE' and 'kubectl logs deployment/$APP --namespace $SERVICE_ACCOUNT_NAMESPACE', then run 'k8s/setup.sh --verify'."

  say "Done: the ai-service ($IMAGE) runs as $MANAGED_IDENTITY_NAME (client id $client_id) with no key in the pod."
  note "A new role assignment can take a few minutes to reach Azure OpenAI; until then requests answer 401/403."
  note "Check everything with: k8s/setup.sh --verify"
}

# Creates the role assignment. A just-created identity takes a while to
# replicate, and the assignment fails with PrincipalNotFound meanwhile:
# retry only that error. --assignee-object-id with the principal type skips
# the Microsoft Graph look-up that would fail the same way.
assign_role() {
  local attempt out
  local cmd=(az role assignment create --role "$ROLE_NAME" --assignee-object-id "$1"
    --assignee-principal-type ServicePrincipal --scope "$AOAI_ID" -o none)
  if dry; then
    change "${cmd[@]}"
    return 0
  fi
  for attempt in 1 2 3 4 5 6; do
    printf '    + %s\n' "$(show "${cmd[@]}")" >&2
    if out=$("${cmd[@]}" 2>&1); then
      [[ -z $out ]] || printf '%s\n' "$out" >&2
      return 0
    fi
    printf '%s\n' "$out" >&2
    case $out in
      *PrincipalNotFound* | *"does not exist in the directory"*)
        [[ $attempt == 6 ]] || {
          note "the new identity has not replicated yet; retrying in ${RETRY_DELAY}s"
          sleep "$RETRY_DELAY"
          continue
        }
        ;;
    esac
    break
  done
  die "Assigning '$ROLE_NAME' on '$AOAI_NAME' failed (see the az error above). You need Owner, User Access Administrator or Role Based Access Control Administrator on the account."
}

# --- verify -------------------------------------------------------------------

PROBLEMS=0
ok() { printf 'ok:      %s\n' "$*" >&2; }
problem() {
  PROBLEMS=$((PROBLEMS + 1))
  printf 'problem: %s\n' "$1" >&2
  printf '         fix: %s\n' "$2" >&2
}

do_verify() {
  preflight
  local subdomain flags issuer oidc wi

  subdomain=$(q az cognitiveservices account show --name "$AOAI_NAME" --resource-group "$AOAI_RG_NAME" \
    --query properties.customSubDomainName -o tsv) || die "Could not read Azure OpenAI account '$AOAI_NAME'."
  if [[ -n $subdomain ]]; then
    ok "Azure OpenAI account $AOAI_NAME has the custom subdomain $subdomain"
  else
    problem "Azure OpenAI account $AOAI_NAME has no custom subdomain; Microsoft Entra authentication requires one." \
      "az cognitiveservices account update --name $AOAI_NAME --resource-group $AOAI_RG_NAME --custom-domain $AOAI_NAME (permanent), then $RERUN"
  fi

  flags=$(q az aks show --resource-group "$RG_NAME" --name "$AKS_NAME" \
    --query "[[oidcIssuerProfile.enabled, securityProfile.workloadIdentity.enabled, oidcIssuerProfile.issuerUrl]]" -o tsv) ||
    die "Could not read cluster '$AKS_NAME'."
  IFS=$'\t' read -r oidc wi issuer <<<"$flags"
  [[ $issuer == None ]] && issuer=""
  if is_true "$oidc" && [[ -n $issuer ]]; then
    ok "cluster $AKS_NAME has an OIDC issuer: $issuer"
  else
    problem "cluster $AKS_NAME has no OIDC issuer." "az aks update --resource-group $RG_NAME --name $AKS_NAME --enable-oidc-issuer"
  fi
  if is_true "$wi"; then
    ok "cluster $AKS_NAME has workload identity enabled"
  else
    problem "cluster $AKS_NAME does not have workload identity enabled." "az aks update --resource-group $RG_NAME --name $AKS_NAME --enable-workload-identity"
  fi

  local ids client_id="" principal_id=""
  ids=$(identity_ids) || die "Could not list the managed identities of '$RG_NAME'."
  if [[ -z $ids ]]; then
    problem "managed identity $MANAGED_IDENTITY_NAME does not exist in $RG_NAME." "$RERUN"
  else
    IFS=$'\t' read -r client_id principal_id <<<"$ids"
    ok "managed identity $MANAGED_IDENTITY_NAME exists (client id $client_id)"

    local fic fic_issuer fic_subject
    fic=$(federated_credential) || die "Could not list the federated credentials of '$MANAGED_IDENTITY_NAME'."
    if [[ -z $fic ]]; then
      problem "federated credential $FEDERATED_CREDENTIAL_NAME does not exist on $MANAGED_IDENTITY_NAME." "$RERUN"
    else
      IFS=$'\t' read -r fic_issuer fic_subject <<<"$fic"
      if [[ $fic_issuer == "$issuer" ]]; then
        ok "federated credential issuer is the cluster's issuer"
      else
        problem "federated credential $FEDERATED_CREDENTIAL_NAME trusts issuer '$fic_issuer', but the cluster's is '$issuer' (token exchange fails with AADSTS700211)." "$RERUN (it updates the credential)"
      fi
      if [[ $fic_subject == "$SUBJECT" ]]; then
        ok "federated credential subject is $SUBJECT"
      else
        problem "federated credential $FEDERATED_CREDENTIAL_NAME has subject '$fic_subject', expected '$SUBJECT' (token exchange fails with AADSTS700213)." "$RERUN (it updates the credential)"
      fi
    fi

    local count
    count=$(role_assignment_count "$principal_id") || die "Could not list the role assignments on '$AOAI_NAME'."
    if [[ ${count:-0} != 0 ]]; then
      ok "$MANAGED_IDENTITY_NAME has '$ROLE_NAME' on $AOAI_NAME"
    else
      problem "$MANAGED_IDENTITY_NAME lacks the role '$ROLE_NAME' on $AOAI_NAME (requests fail with 401/403)." "$RERUN"
    fi
  fi

  verify_kubernetes "$client_id"

  if [[ $PROBLEMS == 0 ]]; then
    say "verify: everything is in place"
    return 0
  fi
  say "verify: $PROBLEMS problem(s) found"
  return 1
}

# Prints one field of a pod: pod_field pod/NAME NAMESPACE JSONPATH.
pod_field() { q kubectl get "$1" --namespace "$2" -o "jsonpath=$3"; }

# Prints the fix for a pod that cannot pull IMAGE $1.
pull_fix() {
  local host=${1%%/*}
  case $host in
    *.azurecr.io | *.azurecr.cn | *.azurecr.us)
      printf '%s' "az aks update --resource-group $RG_NAME --name $AKS_NAME --attach-acr ${host%%.*} (lets the cluster pull from that registry); if the tag is not in the registry, $RERUN builds it"
      ;;
    *) printf '%s' "let the cluster pull from $host (an imagePullSecret), or $RERUN without IMAGE to build this repository into your Azure Container Registry" ;;
  esac
}

# The Kubernetes half of --verify; $1 is the identity's client id, if known.
verify_kubernetes() {
  local client_id=$1 ns=$SERVICE_ACCOUNT_NAMESPACE sa annotation pods pod
  local context
  context=$(kubectl config current-context 2>/dev/null) || context="(none)"
  note "kubectl context: $context"
  if ! sa=$(q kubectl get serviceaccount "$SERVICE_ACCOUNT_NAME" --namespace "$ns" -o name --ignore-not-found); then
    problem "kubectl cannot reach the cluster (context '$context')." \
      "az aks get-credentials --resource-group $RG_NAME --name $AKS_NAME --overwrite-existing"
    return 0
  fi
  if [[ -z $sa ]]; then
    problem "ServiceAccount $ns/$SERVICE_ACCOUNT_NAME does not exist." "$RERUN"
    return 0
  fi
  annotation=$(q kubectl get serviceaccount "$SERVICE_ACCOUNT_NAME" --namespace "$ns" \
    -o 'jsonpath={.metadata.annotations.azure\.workload\.identity/client-id}') || annotation=""
  if [[ -z $annotation ]]; then
    problem "ServiceAccount $ns/$SERVICE_ACCOUNT_NAME lacks the annotation azure.workload.identity/client-id." "$RERUN"
  elif [[ -n $client_id && $annotation != "$client_id" ]]; then
    problem "ServiceAccount $ns/$SERVICE_ACCOUNT_NAME names client id $annotation, but $MANAGED_IDENTITY_NAME's is $client_id." "$RERUN"
  else
    ok "ServiceAccount $ns/$SERVICE_ACCOUNT_NAME carries client id $annotation"
  fi

  pods=$(q kubectl get pods --namespace "$ns" --selector "app=$APP" -o name) || pods=""
  if [[ -z $pods ]]; then
    problem "no pod with label app=$APP runs in namespace $ns." "$RERUN, then look at 'kubectl describe deployment/$APP --namespace $ns'"
    return 0
  fi
  local restart="kubectl rollout restart deployment/$APP --namespace $ns" pull_failed=0
  while IFS= read -r pod; do
    [[ -n $pod ]] || continue
    local label phase ready account env_names secret_refs names_hit injected_id waiting image
    label=$(pod_field "$pod" "$ns" '{.metadata.labels.azure\.workload\.identity/use}' || true)
    phase=$(pod_field "$pod" "$ns" '{.status.phase}' || true)
    ready=$(pod_field "$pod" "$ns" '{.status.containerStatuses[*].ready}' || true)
    waiting=$(pod_field "$pod" "$ns" '{.status.containerStatuses[*].state.waiting.reason}' || true)
    image=$(pod_field "$pod" "$ns" '{.spec.containers[0].image}' || true)
    account=$(pod_field "$pod" "$ns" '{.spec.serviceAccountName}' || true)
    env_names=$(pod_field "$pod" "$ns" '{range .spec.containers[*].env[*]}{.name}{"\n"}{end}' || true)
    secret_refs=$(pod_field "$pod" "$ns" '{.spec.containers[*].envFrom[*].secretRef.name}' || true)
    injected_id=$(pod_field "$pod" "$ns" '{.spec.containers[*].env[?(@.name=="AZURE_CLIENT_ID")].value}' || true)

    if [[ $label == true ]]; then
      ok "$pod has the label azure.workload.identity/use=true"
    else
      problem "$pod lacks the label azure.workload.identity/use=\"true\", so it gets no federated token." "$RERUN (the label belongs on the pod template)"
    fi
    if [[ $account == "$SERVICE_ACCOUNT_NAME" ]]; then
      ok "$pod runs as ServiceAccount $account"
    else
      problem "$pod runs as ServiceAccount '$account', not $SERVICE_ACCOUNT_NAME." "$RERUN"
    fi
    if [[ " $waiting " == *" ErrImagePull "* || " $waiting " == *" ImagePullBackOff "* ]]; then
      pull_failed=1
      problem "$pod cannot pull its image $image (${waiting// /, })." "$(pull_fix "$image")"
    elif [[ $phase == Running && $ready != *false* && -n $ready ]]; then
      ok "$pod is Running and ready"
    else
      problem "$pod is $phase (ready: ${ready:-unknown})." "kubectl describe $pod --namespace $ns; kubectl logs $pod --namespace $ns"
    fi
    # The webhook itself adds AZURE_FEDERATED_TOKEN_FILE, so TOKEN is not a
    # forbidden word here; a key, secret or password is.
    names_hit=$(grep -iE 'KEY|SECRET|PASSWORD' <<<"$env_names" | paste -sd, - || true)
    if [[ -n $names_hit ]]; then
      problem "$pod has environment variables that look like credentials: $names_hit. Workload identity needs no key." \
        "remove them from the Deployment (kubectl edit deployment/$APP --namespace $ns) and delete any Secret that holds them"
    elif [[ -n $secret_refs ]]; then
      problem "$pod loads its environment from Secret(s) $secret_refs. Workload identity needs no key." \
        "remove envFrom from the Deployment (kubectl edit deployment/$APP --namespace $ns)"
    else
      ok "$pod has no key, secret or password among its environment variables"
    fi
    if ! grep -qx AZURE_FEDERATED_TOKEN_FILE <<<"$env_names"; then
      problem "$pod has no AZURE_FEDERATED_TOKEN_FILE: the workload identity webhook did not mutate it (it was created before the label, annotation or cluster feature)." "$restart"
    elif [[ -n $client_id && $injected_id != "$client_id" ]]; then
      problem "$pod got AZURE_CLIENT_ID '$injected_id' but $MANAGED_IDENTITY_NAME's client id is $client_id (the pod predates the current annotation)." "$restart"
    else
      ok "$pod got a federated token from the workload identity webhook"
    fi
  done <<<"$pods"

  if [[ $pull_failed == 1 ]]; then
    note "skipping '/ai-service --version' and '/ai-service check': no container of the pod runs"
    return 0
  fi
  # The image must be this service, not the Python original it replaces
  # (which has no /ai-service) nor any other image that happens to serve 5001.
  local version deployed
  deployed=$(q kubectl get "deployment/$APP" --namespace "$ns" -o 'jsonpath={.spec.template.spec.containers[0].image}' || true)
  if version=$(q kubectl exec "deployment/$APP" --namespace "$ns" -- /ai-service --version 2>&1) &&
    [[ $version =~ ^ai-service\ [0-9] ]]; then
    ok "the pod runs this ai-service: ${version%%$'\n'*} (image $deployed)"
  else
    [[ -z $version ]] || printf '%s\n' "$version" | sed 's/^/         /' >&2
    problem "the image $deployed is not this ai-service: '/ai-service --version' does not answer 'ai-service <version>' (the Python original has no /ai-service)." \
      "$RERUN without IMAGE (it builds this repository into your registry and deploys it), or set IMAGE to an image built from this repository"
    return 0
  fi

  local check_out
  if check_out=$(q kubectl exec "deployment/$APP" --namespace "$ns" -- /ai-service check 2>&1); then
    ok "'/ai-service check' in the pod succeeded"
    [[ -z $check_out ]] || printf '%s\n' "$check_out" | sed 's/^/         /' >&2
  else
    printf '%s\n' "$check_out" | sed 's/^/         /' >&2
    problem "'/ai-service check' in the pod failed (its output is above)." \
      "follow its advice; 'kubectl logs deployment/$APP --namespace $ns' has the service's own log"
  fi
}

# --- teardown -----------------------------------------------------------------

do_teardown() {
  require_tools
  require_login
  local exists
  exists=$(q az group exists --name "$RG_NAME") || die "Could not look up resource group '$RG_NAME' (see the az error above)."
  if ! is_true "$exists"; then
    say "Resource group '$RG_NAME' does not exist: nothing to delete."
    return 0
  fi

  say "1/4 Delete the Kubernetes objects"
  local clusters
  if [[ -z $AKS_NAME ]]; then
    clusters=$(q az aks list --resource-group "$RG_NAME" --query "[].name" -o tsv) || die "Could not list the AKS clusters of '$RG_NAME'."
    [[ $(count_lines "$clusters") != 1 ]] || AKS_NAME=$clusters
  else
    clusters=$(q az aks list --resource-group "$RG_NAME" --query "[?name=='$AKS_NAME'].name" -o tsv) || die "Could not list the AKS clusters of '$RG_NAME'."
    [[ -n $clusters ]] || AKS_NAME=""
  fi
  if [[ -z $AKS_NAME ]]; then
    note "no single AKS cluster found in $RG_NAME (set AKS_NAME to choose one), skipping"
  else
    change az aks get-credentials --resource-group "$RG_NAME" --name "$AKS_NAME" --overwrite-existing ||
      die "Could not get the credentials of cluster '$AKS_NAME' (see the az error above)."
    # Includes the optional objects of k8s/extras/. The namespace stays: it
    # may hold other workloads.
    change kubectl delete --namespace "$SERVICE_ACCOUNT_NAMESPACE" --ignore-not-found \
      "deployment/$APP" "service/$APP" "serviceaccount/$SERVICE_ACCOUNT_NAME" \
      "horizontalpodautoscaler/$APP" "poddisruptionbudget/$APP" "networkpolicy/$APP" ||
      die "kubectl delete failed (see the error above)."
  fi

  local ids client_id principal_id
  ids=$(identity_ids) || die "Could not list the managed identities of '$RG_NAME'."
  if [[ -z $ids ]]; then
    say "2/4 Delete the federated credential"
    note "identity $MANAGED_IDENTITY_NAME does not exist, skipping"
    say "3/4 Delete the role assignment"
    note "identity $MANAGED_IDENTITY_NAME does not exist, skipping"
    say "4/4 Delete the managed identity"
    note "does not exist, skipping"
    say "Teardown finished."
    return 0
  fi
  IFS=$'\t' read -r client_id principal_id <<<"$ids"

  say "2/4 Delete the federated credential $FEDERATED_CREDENTIAL_NAME"
  local fic
  fic=$(federated_credential) || die "Could not list the federated credentials of '$MANAGED_IDENTITY_NAME'."
  if [[ -z $fic ]]; then
    note "does not exist, skipping"
  else
    change az identity federated-credential delete --name "$FEDERATED_CREDENTIAL_NAME" \
      --identity-name "$MANAGED_IDENTITY_NAME" --resource-group "$RG_NAME" --yes ||
      die "Deleting federated credential '$FEDERATED_CREDENTIAL_NAME' failed (see the az error above)."
  fi

  say "3/4 Delete the identity's '$ROLE_NAME' assignments"
  # Looked up across the subscription, so an assignment on an account that
  # is no longer the current one goes too; deleting the identity alone would
  # leave them behind as "Identity not found".
  local assignments assignment
  assignments=$(q az role assignment list --all \
    --query "[?principalId=='$principal_id' && roleDefinitionName=='$ROLE_NAME'].id" -o tsv) ||
    die "Could not list the role assignments of '$MANAGED_IDENTITY_NAME' (see the az error above)."
  if [[ -z $assignments ]]; then
    note "none, skipping"
  else
    while IFS= read -r assignment; do
      [[ -n $assignment ]] || continue
      change az role assignment delete --ids "$assignment" ||
        die "Deleting role assignment $assignment failed (see the az error above)."
    done <<<"$assignments"
  fi

  say "4/4 Delete the managed identity $MANAGED_IDENTITY_NAME"
  change az identity delete --resource-group "$RG_NAME" --name "$MANAGED_IDENTITY_NAME" ||
    die "Deleting managed identity '$MANAGED_IDENTITY_NAME' failed (see the az error above)."

  say "Teardown finished. The cluster keeps its OIDC issuer and workload identity (other workloads may use them; the issuer cannot be turned off)."
  note "The container registry, its images and the cluster's pull access stay (other images may live there): 'az aks update --detach-acr <registry>' and 'az acr delete --name <registry>' remove them."
  dry && say "Dry run: nothing was changed."
  return 0
}

# --- main ---------------------------------------------------------------------

main() {
  local mode=setup arg
  for arg in "$@"; do
    case $arg in
      --dry-run) DRY_RUN=1 ;;
      -v | --verbose) VERBOSE=1 ;;
      --verify) mode=verify ;;
      --teardown) mode=teardown ;;
      -h | --help)
        usage
        return 0
        ;;
      *)
        usage >&2
        die "Unknown argument '$arg'."
        ;;
    esac
  done
  WORK_DIR=$(mktemp -d)
  trap 'rm -rf "$WORK_DIR"' EXIT
  dry && say "Dry run: commands that change something are printed, not run."
  case $mode in
    setup) do_setup ;;
    verify) do_verify ;;
    teardown) do_teardown ;;
  esac
}

main "$@"
