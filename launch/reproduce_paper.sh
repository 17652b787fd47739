#!/usr/bin/env bash
# The paper's Tables 5-7 and Fig. 2 in one command, into OUT/REPORT.md (default runs/reproduce).
# Usage: launch/reproduce_paper.sh [--smoke] [--model PATH] [--medqa PATH] [--kormedmcqa PATH]
#        [--out DIR] [--nproc N] [--ratios LIST] [--section.key=value ...]
# --smoke: the whole chain on the embedded default, a few steps, on a CPU (mechanics only).
# Rerunning the same command skips what finished and resumes what did not.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python reproduce.py "$@"
