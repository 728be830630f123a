"""A tokenizer's chat template (Jinja, as Hugging Face tokenizer_config.json holds it) applied
to a conversation, as transformers' apply_chat_template renders it: a sandboxed Jinja
environment with trimmed blocks, loop controls, `tojson`, `raise_exception` and
`strftime_now`, and the tokenizer's bos_token and eos_token in the template's context.

A conversation is a list of {"role": ..., "content": ...} messages.
"""

import datetime
import functools

from jaxgpt.errors import UserError


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
  """The conversation as the model sees it; `add_generation_prompt` ends it with the start
  of an assistant turn (what the model answers after)."""
  template = getattr(tokenizer, "chat_template", None)
  if not template:
    raise UserError("the tokenizer has no chat template: use a chat model's folder (its "
                    "tokenizer_config.json or chat_template.jinja has one) or write a "
                    "chat_template.jinja into the model's folder; training from scratch, "
                    "--config.data.tokenizer_path=FOLDER of a tokenizer with one")
  specials = tokenizer.specials
  import jinja2  # pylint: disable=g-import-not-at-top
  try:
    return _compiled(template).render(
        messages=messages, add_generation_prompt=add_generation_prompt,
        bos_token=specials.bos_token or "", eos_token=specials.eos_token or "")
  except jinja2.TemplateError as e:
    raise UserError(f"the tokenizer's chat template cannot render this conversation ({e}): "
                    "check its roles and their order against the model's template") from None


@functools.lru_cache(maxsize=4)
def _compiled(template: str):
  import jinja2  # pylint: disable=g-import-not-at-top
  from jinja2 import ext, sandbox  # pylint: disable=g-import-not-at-top

  def raise_exception(message):
    raise jinja2.TemplateError(message)

  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                              extensions=[ext.loopcontrols])
  env.globals.update(raise_exception=raise_exception,
                     strftime_now=lambda fmt: datetime.datetime.now().strftime(fmt))
  try:
    return env.from_string(template)
  except jinja2.TemplateSyntaxError as e:
    raise UserError(f"the tokenizer's chat template is not valid Jinja ({e}): fix it in the "
                    "folder's chat_template.jinja (or tokenizer_config.json's chat_template)"
                    ) from None
