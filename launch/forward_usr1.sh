#!/bin/bash
# Run a launcher (accelerate launch / torchrun) and pass SIGUSR1 to its workers only, not to the launcher:
#   bash launch/forward_usr1.sh accelerate launch ... -m gbpo.train RECIPE.yaml ...
# launch/slurm_vllm_server.sh runs it on every training node. SLURM's early warning (sbatch --signal=B:USR1@600)
# reaches this shell through srun; the workers (gbpo.train, PreemptionCallback) then save a checkpoint at the end of
# their step and exit with status 143. The launcher must not act on it: torchrun's agent, when it handles a signal,
# sends it on and kills its workers 30 s later (cutting the save short), and unhandled, SIGUSR1 would kill the agent
# at once. So the launcher starts with SIGUSR1 ignored (inherited by the workers until gbpo.train installs its
# handler when training begins) and this shell signals the launcher's children, found by parent pid (pkill -P).
# Exits with the launcher's status.
set -u
trap '' USR1
"$@" &
launcher=$!
trap 'echo "forward_usr1.sh: SIGUSR1 -> the workers of pid $launcher" >&2; pkill -USR1 -P "$launcher"' USR1
while kill -0 "$launcher" 2>/dev/null; do
  wait "$launcher"  # returns early, with 128 + 10, when the trap has run; the launcher goes on
done
wait "$launcher"  # bash keeps a finished child's status
exit $?
