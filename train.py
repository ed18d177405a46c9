"""The seed's training entry point: `from train import train_model`, and `python train.py`.

A thin layer over the gptoss package: train_model lives in gptoss/training.py, the demo that
`python train.py` runs in gptoss/demo.py (`python train.py --help` lists its options).
"""

from gptoss.training import train_model

__all__ = ["train_model"]

if __name__ == "__main__":
    from gptoss.demo import main

    main()
