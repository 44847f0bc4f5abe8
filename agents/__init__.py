"""Actor-critic, PPO-family loss core, advantages, optimal sampling, trainer."""
