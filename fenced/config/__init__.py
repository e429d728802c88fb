"""Policy files into a :class:`fenced.core.model.Config`: grammar, schema, reading.

Import each name from the module that owns it (this package re-exports nothing):

* :mod:`fenced.config.entries` (pure): the grammar of one value, e.g. ``parse_outbound``,
  ``parse_inbound``, ``parse_listen``; raises ``ValueError`` with an operator's reason.
* :mod:`fenced.config.schema` (pure): the keys, types and defaults of a policy file and
  ``parse_documents``, which validates parsed TOML into a ``Config`` or raises one
  ``ConfigError`` listing every problem; ``LOG_LEVELS``.
* :mod:`fenced.config.files` (I/O): ``load`` reads the main file and its drop-ins, with
  the system's user, group and resolver look-ups; ``DEFAULT_PATH``.

``docs/config.md`` is the reference for the file format.
"""
