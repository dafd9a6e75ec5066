"""portaft chat OUTPUT_DIR_OR_MODEL [--prompt TEXT]: talk to a trained model in its chat template."""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="talk to a trained model (a run's output, a merged folder or a chat model)")
    p.add_argument("model", metavar="OUTPUT_DIR_OR_MODEL",
                   help="a run's train.output_dir, a merged model folder, or a model folder with a chat template")
    p.add_argument("--prompt", metavar="TEXT", help="answer this one message on stdout and exit (for scripts)")
    p.add_argument("--system", metavar="TEXT", help="system prompt (default: the run recipe's system:; '' for none)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); above 0, sampling")
    p.add_argument("--top-k", type=int, default=50, help="sampling: the K likeliest tokens only (default 50; 0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="sampling: the likeliest tokens up to this mass (default 1)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="longest reply in tokens (default 512)")
    p.add_argument("--device", default="auto",
                   help="auto (default: npu, else cuda, else cpu, whichever is available), cpu, cuda, npu")
    p.add_argument("--base", metavar="PATH", help="the base model of an adapter, when not where the run's recipe says")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    from portaft.after.chat import Sampling, converse, open_session

    def status(line: str) -> None:  # stdout carries the replies only
        print(line, file=sys.stderr, flush=True)

    sampling = Sampling(args.temperature, args.top_k, args.top_p, args.max_new_tokens)
    session = open_session(args.model, system=args.system, device=args.device, base=args.base, sampling=sampling,
                           echo=status)
    if args.prompt is not None:
        session.ask(args.prompt)
    else:
        converse(session, status)
    return 0
