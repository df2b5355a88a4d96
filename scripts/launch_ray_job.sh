#!/usr/bin/env bash
# Submit a recipe to an existing Ray cluster (the driver runs on the head node).
#   bash scripts/launch_ray_job.sh http://HEAD:8265 recipes/paper/sppo-mistral-7b.yaml [key=value ...]
# The run directory must be on storage every node can read (the engines load checkpoints
# from it): pass --run-dir /shared/runs/NAME among the arguments.
set -euo pipefail
address=$1; shift
ray job submit --address "$address" --working-dir . -- selfplay run "$@" --ray-address auto
