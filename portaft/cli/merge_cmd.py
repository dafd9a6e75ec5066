"""portaft merge OUTPUT_DIR --to DIR: fold a run's LoRA adapter into its base model, saved as a plain model."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("merge", help="merge a run's adapter into its base model (a folder transformers loads alone)")
    p.add_argument("output_dir", metavar="OUTPUT_DIR", help="a run's train.output_dir (or one of its checkpoint-N)")
    p.add_argument("--to", required=True, metavar="DIR", help="folder for the merged model (new or empty)")
    p.add_argument("--max-shard-size", default="2GB", metavar="SIZE",
                   help="largest weight file, e.g. 2GB, 500MB (default 2GB); bigger models are split in shards")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="dtype of the merged weights; auto = the one the run trained the weights in (default)")
    p.add_argument("--base", metavar="PATH", help="the base model, when not where the run's recipe says")
    p.add_argument("--overwrite", action="store_true", help="replace the model weights in a non-empty DIR")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    from portaft.after.merge import merge

    merge(args.output_dir, args.to, max_shard_size=args.max_shard_size, dtype=args.dtype, overwrite=args.overwrite,
          base=args.base)
    return 0
