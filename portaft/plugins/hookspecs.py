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

    :param register: call ``register(backend)`` once per backend: an instance of a
        :class:`portaft.backends.TransformersBackend` subclass, or any object with the
        members of :class:`portaft.protocols.Backend`. Its ``name`` is what recipes and
        ``--backend`` use. A backend whose members raise when read is refused, and
        ``portaft backends`` says why.
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
        list of ``{"role": "system" | "user" | "assistant" | "tool", "content": str}``
        (an assistant message may carry OpenAI ``tool_calls`` and ``reasoning_content``,
        ``"train": False`` leaves it untrained; a ``portaft.data.formats.Conversation``
        also carries the record's ``tools``), or a ``portaft.data.formats.PretrainText``
        for pretraining text, and raises ``ValueError`` (``portaft.data.BadSample``)
        whose message names the bad field; portaft adds the file and line. Records of a
        kind portaft does not train (preference pairs, KTO labels, images) are refused
        before the format sees them. ``keys``: auto-detection picks this format when a
        record has all of these keys. Recipes pick it with ``format: NAME``.
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


@hookspec
def register_speed_ups(register, backend):
    """Offer speed-ups for a run; called once per run, after the backend's own.

    :param register: call ``register(speed_up)`` once per speed-up: a module or object
        with ``NAME`` (a word), ``STAGE`` (``"settings"``: it changes the effective
        recipe's training settings before anything loads; ``"model"``: it changes the
        loaded model, the batches or the callbacks), ``applies(training) -> str | None``
        (None when it applies, else why not) and ``apply(training) -> str`` (what it did,
        one line). ``training`` is a :class:`portaft.speed_ups.Training`. The run's notes
        list it, applied or not, with the reason. It must keep the loss the same.
    :param backend: the run's backend (``backend.name``, ``backend.device_type``): offer
        nothing where the speed-up has no meaning.
    """
