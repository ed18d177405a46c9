"""The seed's training entry point: `from train import train_model`, and `python train.py`.

A thin layer over the gptoss package: train_model lives in gptoss/train/simple.py, the demo that
`python train.py` runs in gptoss/cli/demo.py (`python train.py --help` lists its options).
"""

from gptoss.train import train_model

__all__ = ["train_model"]

if __name__ == "__main__":
    from gptoss.cli.demo import main

    main()
