"""The hooks a portaft plugin can implement.

Every hook is a verb that receives a `register` callback: portaft collects,
de-duplicates and names what plugins register. pluggy calls hooks with keyword
arguments only, and an implementation may accept fewer arguments than the spec.
"""

import pluggy

hookspec = pluggy.HookspecMarker("portaft")
hookimpl = pluggy.HookimplMarker("portaft")


@hookspec
def register_backends(register):
    """Register training backends.

    :param register: call ``register(backend)`` once per backend. ``backend`` is any
        object with the attributes and methods of :class:`portaft.protocols.Backend`
        (no base class needed); its ``name`` is what recipes and ``--backend`` use.
    """


@hookspec
def register_templates(register):
    """Register named chat templates.

    :param register: call ``register(name, chat_template)`` where ``chat_template`` is
        a Jinja template in the ``tokenizer.chat_template`` dialect (``messages``,
        ``bos_token``, ``eos_token``, ``add_generation_prompt``). Recipes pick it with
        ``template: NAME``.
    """


@hookspec
def register_formats(register):
    """Register data formats.

    :param register: call ``register(name, to_messages, keys=(...))``.
        ``to_messages(record)`` turns one record (a dict of the file's fields) into a
        list of ``{"role": "system" | "user" | "assistant", "content": str}`` and raises
        ``ValueError`` (or ``portaft.BadSample``) whose message names the bad field;
        portaft adds the file and line. ``keys``: auto-detection picks this format
        when a record has all of these keys. Recipes pick it with ``format: NAME``.
    """


@hookspec
def register_callbacks(register, recipe):
    """Register transformers Trainer callbacks for one run; called once per run.

    :param register: call ``register(callback, report_to=None, note=None)`` once per
        callback. ``callback`` is a ``transformers.TrainerCallback`` instance or class
        (what ``Trainer.add_callback`` takes). ``report_to``: the ``train.report_to``
        name this callback serves, e.g. ``"swanlab"``: portaft then accepts that name
        on every transformers version and leaves it out of the ``report_to`` it gives
        TrainingArguments, so transformers' own integration of that name (if any) does
        not log twice; one plugin serves a name, a second is refused. ``note``: one
        line portaft prints and records with the run's notes (where the logs go).
    :param recipe: the effective ``portaft.Recipe`` of the run (after the backend's
        ``resolve``), read-only. ``recipe.train["report_to"]`` is explicit by then
        (``portaft.tracking.report_to_names(recipe.train)`` lists its names). Register
        nothing when the recipe does not ask for what the plugin does.
    """
