"""Run ``open_r1.select_data`` under torchrun on CPU with the distributed tests' dense reward.

torchrun --nproc_per_node 2 tests/_dist_select.py [select_data flags ...]
"""

from _dist_train import low_token_reward

from open_r1.rewards import REWARD_FUNCS
from open_r1.select_data import cli

if __name__ == "__main__":
    REWARD_FUNCS["low_token"] = low_token_reward
    cli()
