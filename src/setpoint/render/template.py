"""Templates: the "template" stage (a File's ``template``/``templateSource`` → its bytes).

Role: renders one File's content with Jinja2's :class:`SandboxedEnvironment`
(``StrictUndefined``, no autoescape, no loader: ``include``/``import`` are
refused) from a context of ``vars``, ``labels`` (the host's) and ``secrets``.
Called by :mod:`setpoint.render.pipeline` once per templated File per render
(the rendered stack is cached, so not per pass).

- Errors (syntax, an undefined name, a sandbox escape such as
  ``{{ ''.__class__ }}``, any other failure) raise :class:`TemplateFailure`
  with the line *inside the template*; the pipeline turns it into a
  ``file:line`` ManifestError.
- A template that names ``secrets`` anywhere (found statically in its syntax
  tree, so a branch not taken counts too) makes its File sensitive; its
  errors are scrubbed of every secret value before anyone sees them.
- The text is kept as written, including its final newline
  (``keep_trailing_newline``): a template without expressions renders to
  exactly its own bytes.
- Output is capped (the File ``source`` limit), so a loop cannot fill memory;
  Jinja's sandbox also caps ``range()`` at 100,000 items.

Deterministic: the same text and context give the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Jinja2 loads with the first template: most renders and runs have none
    from jinja2 import Template

SECRETS = "secrets"
_MASK = "(secret)"


class TemplateFailure(Exception):
    """A template could not be rendered; ``line`` is 1-based inside the template (0: unknown)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass(frozen=True)
class Output:
    data: bytes
    reads_secrets: bool


class Templates:
    """One render's templates: compiled once per distinct text, rendered per File."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._env: Any = None
        self._compiled: dict[str, tuple[Template, bool] | TemplateFailure] = {}

    def render(self, text: str, context: Mapping[str, Any]) -> Output:
        """Render ``text`` with ``context`` (``vars``, ``labels``, ``secrets``)."""
        template, reads_secrets = self._compile(text)
        out: list[str] = []
        size = 0
        try:
            for chunk in template.generate(dict(context)):
                size += len(chunk)  # characters: a lower bound of the UTF-8 size
                if size > self.max_bytes:
                    raise TemplateFailure(
                        0, f"renders to more than {self.max_bytes} bytes (the File size limit)"
                    )
                out.append(chunk)
        except TemplateFailure:
            raise
        except Exception as exc:
            message = _describe(exc)
            if reads_secrets:
                message = scrub(message, context.get(SECRETS))
            raise TemplateFailure(_template_line(exc.__traceback__), message) from None
        data = "".join(out).encode("utf-8", "surrogateescape")
        if len(data) > self.max_bytes:
            raise TemplateFailure(0, f"renders to {len(data)} bytes, over {self.max_bytes}")
        return Output(data, reads_secrets)

    def _compile(self, text: str) -> tuple[Template, bool]:
        from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
        from jinja2.sandbox import SandboxedEnvironment

        hit = self._compiled.get(text)
        if hit is None:
            if self._env is None:
                self._env = SandboxedEnvironment(
                    undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
                )
            try:
                ast = self._env.parse(text)
                # Any load of the name counts (even one shadowed by a ``set``): the safe side,
                # and a tenth of the cost of jinja2.meta's full code generation.
                reads = any(
                    n.name == SECRETS and n.ctx == "load" for n in ast.find_all(nodes.Name)
                )
                hit = (self._env.from_string(ast), reads)
            except TemplateSyntaxError as exc:
                hit = TemplateFailure(exc.lineno or 0, f"template syntax error: {exc.message}")
            self._compiled[text] = hit
        if isinstance(hit, TemplateFailure):
            raise TemplateFailure(hit.line, hit.message)
        return hit


def _describe(exc: BaseException) -> str:
    from jinja2.exceptions import SecurityError, UndefinedError

    if isinstance(exc, UndefinedError):
        hint = "define it (vars, varFiles) or guard it with | default(...)"
        return f"undefined in template: {exc.message}; {hint}"
    if isinstance(exc, SecurityError):
        return f"refused by the template sandbox: {exc.message}"
    text = str(exc).strip().splitlines()
    return f"template failed: {type(exc).__name__}: {text[0] if text else ''}"


def _template_line(tb: TracebackType | None) -> int:
    """The template line of the innermost template frame (Jinja maps its frames back)."""
    line = 0
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def scrub(message: str, secrets: Any) -> str:
    """``message`` with every secret string (and number) replaced by a mask."""
    for value in sorted(set(_leaves(secrets)), key=len, reverse=True):
        if value:
            message = message.replace(value, _MASK)
    return message


def _leaves(value: Any) -> Iterable[str]:
    if isinstance(value, Mapping):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _leaves(item)
    elif value is not None and not isinstance(value, bool):
        yield str(value)
