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
account, federates it with the pod's ServiceAccount, and applies the
ServiceAccount, Deployment and Service from k8s/ with the values filled in.
Steps whose result already exists are skipped.

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
  IMAGE                      container image
                             [ghcr.io/azure-samples/aks-store-demo/ai-service:latest]
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
IMAGE=${IMAGE:-ghcr.io/azure-samples/aks-store-demo/ai-service:latest}
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

# The placeholders in k8s/*.yaml that this script fills in.
readonly PH_CLIENT_ID="00000000-0000-0000-0000-000000000000"
readonly PH_ENDPOINT="https://YOUR-AZURE-OPENAI-NAME.openai.azure.com/"
readonly PH_DEPLOYMENT="YOUR-CHAT-DEPLOYMENT"
readonly PH_IMAGE="ghcr.io/azure-samples/aks-store-demo/ai-service:latest"
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

require_login() {
  local sub name id
  sub=$(q az account show --query "[[name, id]]" -o tsv) ||
    die "The Azure CLI is not logged in. Run 'az login' (and 'az account set --subscription <id>' to pick the subscription), then run this script again."
  IFS=$'\t' read -r name id <<<"$sub"
  say "Subscription: $name ($id)"
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

  say "1/9 Enable the OIDC issuer and workload identity on cluster $AKS_NAME"
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

  say "2/9 Read the cluster's OIDC issuer URL"
  local issuer
  issuer=$(q az aks show --resource-group "$RG_NAME" --name "$AKS_NAME" \
    --query oidcIssuerProfile.issuerUrl -o tsv) ||
    die "Could not read the OIDC issuer URL of '$AKS_NAME' (see the az error above)."
  if [[ -z $issuer ]]; then
    dry || die "Cluster '$AKS_NAME' reports no OIDC issuer URL although the issuer was enabled. Run 'az aks update --resource-group $RG_NAME --name $AKS_NAME --enable-oidc-issuer' and then this script again."
    issuer="<OIDC issuer URL of $AKS_NAME>"
  fi
  note "issuer: $issuer"

  say "3/9 Create the managed identity $MANAGED_IDENTITY_NAME"
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

  say "4/9 Find the Azure OpenAI resource id"
  note "$AOAI_ID"

  say "5/9 Give the identity '$ROLE_NAME' on $AOAI_NAME"
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

  say "6/9 Federate the identity with ServiceAccount $SERVICE_ACCOUNT_NAMESPACE/$SERVICE_ACCOUNT_NAME"
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

  say "7/9 Get the cluster's credentials for kubectl"
  # --overwrite-existing: a rerun must not stop at "context already exists".
  change az aks get-credentials --resource-group "$RG_NAME" --name "$AKS_NAME" --overwrite-existing ||
    die "Could not get the credentials of cluster '$AKS_NAME' (see the az error above). You need the Azure Kubernetes Service Cluster User role on it."

  say "8/9 Read the Azure OpenAI endpoint and chat deployment"
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

  say "9/9 Apply the ServiceAccount, Deployment and Service"
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

  say "Done: the ai-service runs as $MANAGED_IDENTITY_NAME (client id $client_id) with no key in the pod."
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
  local restart="kubectl rollout restart deployment/$APP --namespace $ns"
  while IFS= read -r pod; do
    [[ -n $pod ]] || continue
    local label phase ready account env_names secret_refs names_hit injected_id
    label=$(pod_field "$pod" "$ns" '{.metadata.labels.azure\.workload\.identity/use}' || true)
    phase=$(pod_field "$pod" "$ns" '{.status.phase}' || true)
    ready=$(pod_field "$pod" "$ns" '{.status.containerStatuses[*].ready}' || true)
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
    if [[ $phase == Running && $ready != *false* && -n $ready ]]; then
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
