"""Run ``open_r1.select_data`` under torchrun on CPU with the distributed tests' dense reward, and a reward that is
each query's own number (``synth_003#0`` -> 3.0), so the test can see that every query recorded its own rewards.

torchrun --nproc_per_node 2 tests/_dist_select.py [select_data flags ...]
"""

from _dist_train import low_token_reward

from open_r1.rewards import REWARD_FUNCS
from open_r1.select_data import cli


def query_number_reward(completions, query_id, **kwargs) -> list[float]:
    return [float(q.split("_")[1].split("#")[0]) for q in query_id]


if __name__ == "__main__":
    REWARD_FUNCS["low_token"] = low_token_reward
    REWARD_FUNCS["query_number"] = query_number_reward
    cli()
