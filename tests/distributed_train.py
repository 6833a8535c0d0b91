"""Run ``training/train.py`` under ``accelerate launch`` and save this rank's final weights.

Used by ``test_training.py`` to check that data-parallel processes end with identical weights.
"""

import sys
from pathlib import Path

from accelerate import PartialState
from safetensors.torch import save_file

from mnist_diffusion.training.train import parse_args, train

if __name__ == "__main__":
    model = train(parse_args(sys.argv[1:]))
    rank = PartialState().process_index
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(Path(parse_args(sys.argv[1:]).output_dir, f"rank{rank}.safetensors")))
