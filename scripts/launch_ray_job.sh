#!/usr/bin/env bash
# Submit a recipe to a running Ray cluster as a Ray job; the driver runs on the head node.
#   bash scripts/launch_ray_job.sh http://HEAD:8265 recipes/paper/sppo-mistral-7b.yaml --run-dir /shared/runs/NAME [key=value ...]
# - The job API is served by the head's dashboard (port 8265): the cluster needs ray[default].
# - This checkout is uploaded as the job's working directory, less what .gitignore and .rayignore
#   name (.venv, runs, wandb, caches). .git goes too, which Ray 2.60 leaves out by default: the
#   driver records the commit in every manifest. The driver is `python -m selfplay.cli` run in
#   that copy, so the driver and the actors run the code you submit. `python` is the head's:
#   start the cluster (`ray start`) from the environment that has selfplay's dependencies.
# - A relative RECIPE is a path in this repository. --run-dir is required and absolute, on storage
#   every node reads (the engines load checkpoints from it): the job's working directory is a
#   temporary copy that Ray deletes.
# - Ray 2.60 clusters want their auth token (~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or
#   RAY_AUTH_TOKEN), but `ray job submit` sends it only with RAY_AUTH_MODE=token. When
#   RAY_AUTH_MODE is unset and a token is there, this script sets it (as `ray start` does).
# Exit status: 0 when the job succeeded (or was stopped with `ray job stop`), 1 when it failed,
# 2 for a bad command line. Ctrl-C stops following the job, not the job: `ray job stop ID`.
set -euo pipefail
usage="usage: bash scripts/launch_ray_job.sh DASHBOARD_URL RECIPE --run-dir /ABSOLUTE/SHARED/PATH [key=value ...]"
fail() { echo "launch_ray_job.sh: error: $1" >&2; exit 2; }
[ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }
address=$1; shift
recipe=$1
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
case $address in
  http://*|https://*) ;;
  *) fail "DASHBOARD_URL: the head's dashboard address, http://HOST:8265 (got '$address')" ;;
esac
if [[ $recipe != /* && ! -f $repo/$recipe ]]; then
  fail "RECIPE: $recipe is not a file in $repo (a relative path is read in the uploaded repository)"
fi
run_dir=
previous=
for arg in "$@"; do
  [ "$previous" = --run-dir ] && run_dir=$arg
  [[ $arg == --run-dir=* ]] && run_dir=${arg#--run-dir=}
  previous=$arg
done
[ -n "$run_dir" ] || fail "--run-dir is required: an absolute path on storage every node of the cluster sees"
[[ $run_dir == /* ]] || fail "--run-dir $run_dir: must be absolute (the job runs in a temporary copy of the repository)"

command -v ray >/dev/null || fail "ray: command not found (activate the environment selfplay is installed in: source .venv/bin/activate)"
if [ -z "${RAY_AUTH_MODE:-}" ] && { [ -n "${RAY_AUTH_TOKEN:-}" ] || [ -s "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ]; }; then
  export RAY_AUTH_MODE=token
fi
# Ray's default excludes less .git (a value set in the caller's environment wins)
export RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES=${RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES-.venv,venv,__pycache__}
exec ray job submit --address "$address" --working-dir "$repo" -- python -m selfplay.cli run "$@" --ray-address auto
