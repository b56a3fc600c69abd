"""Built-in tasks; importing this package registers them (`zorro_jax.rl.task.TASKS`):
"text2sql" (execution reward in a DuckDB sandbox) and "arithmetic" (synthetic word problems,
exact-match reward)."""

from zorro_jax.tasks.arithmetic import task as _arithmetic  # noqa: F401  (registers "arithmetic")
from zorro_jax.tasks.text2sql import task as _text2sql  # noqa: F401  (registers "text2sql")
