#!/bin/bash
# A t5x_lite run on a Cloud TPU pod slice (TPU VMs): the same command on every worker.
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/llama_1b.py /mnt/shared/runs/llama_1b
#
# Each worker runs one process over its local chips; the slice is detected from the TPU
# environment (t5x_lite.cluster: TPU_WORKER_HOSTNAMES, or --cluster=tpu), so no
# coordinator flags are needed. The workdir must be on a file system every worker
# mounts (e.g. Filestore over NFS); gs:// workdirs are not supported yet.
set -euo pipefail
TPU=${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [flags...]}
ZONE=${2:?}
CONFIG=${3:?}
WORKDIR=${4:?}
shift 4
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="
  cd ~/t5x_lite && python3 run_train.py --cluster=tpu --config='$CONFIG' \
      --workdir='$WORKDIR' --config.mesh.data=1 --config.mesh.fsdp=-1 $*"
