"""dance-export: a trained encoder as a folder other tools load.

    dance-export runs/demo-dance/checkpoint-40 --format sentence-transformers runs/exported/demo-dance
    dance-export minilm --format sentence-transformers runs/exported/minilm
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..outputs import check_output_folder
from .common import add_prompt_arguments, encoder_overrides, user_errors_exit_2

DESCRIPTION = __doc__.split("\n\n")[0]

EPILOG = """\
CHECKPOINT is a checkpoint folder written by dance-train, a folder written by DualEncoder.save, a Hugging Face
model folder or hub name, or the alias `minilm`.

--format sentence-transformers writes a folder that SentenceTransformer(OUT) loads with sentence-transformers'
own modules only (Transformer, Pooling, Dense, LayerNorm, Normalize; no custom code, no trust_remote_code).
Encode queries with model.encode_query(...) and documents with model.encode_document(...) (or encode): the
vectors equal the project's within 1e-5, which the export checks on probe texts before it writes anything.
Documents are truncated at the model's doc_max_length, queries (encode_query) at its query_max_length.
Separate query and document towers, or a head whose LayerNorm the documents skip (doc_layernorm: false), are
written as a query / document Router (sentence-transformers >= 5). Scores are dot products
(similarity_fn_name "dot"); the training temperature is not part of the folder. OUT must be absent or an empty
folder; with --overwrite, whatever it holds is replaced as a whole (atomically, nothing left beside it).
dance-eval, dance-analyze and dance-mine read OUT back with these modules and give the model's numbers.

OUT/README.md is a model card (front matter for the Hugging Face Hub: library_name, pipeline_tag, base_model, tags,
datasets and a model-index of the checkpoint's dev metrics; the body: usage, the resolved recipe, how the negatives
were mined and the geometry at that checkpoint). Nothing is uploaded: the command to publish OUT is printed.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dance-export", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint folder, model folder, hub name or "
                                                                 "'minilm'")
    parser.add_argument("out", metavar="OUT", type=Path, help="the folder to write")
    parser.add_argument("--format", required=True, choices=("sentence-transformers",),
                        help="what to write (sentence-transformers: a SentenceTransformer folder)")
    parser.add_argument("--query-max-length", type=int, default=None, help="override the model's query length")
    parser.add_argument("--doc-max-length", type=int, default=None, help="override the model's document length")
    add_prompt_arguments(parser)
    parser.add_argument("--repo-id", default=None, metavar="OWNER/NAME",
                        help="the Hub repository the model card and the printed upload command name (default: "
                             "<your-user>/<OUT's name>); nothing is uploaded")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace what OUT holds (a file, or a non-empty folder); without it OUT must be "
                             "absent or an empty folder")
    return parser


@user_errors_exit_2
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..interop.sentence_transformers import export_sentence_transformers  # heavy (torch): --help stays quick

    overrides = encoder_overrides(args)
    check_output_folder(args.out, ours=None, what="an empty folder", overwrite=args.overwrite)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from ..interop.model_card import model_card  # heavy (scipy, 1.8 s): --help stays quick

    def card(report) -> str:
        return model_card(args.checkpoint, dim=report.dim, query_max_length=report.query_max_length,
                          doc_max_length=report.doc_max_length, router=report.router,
                          max_abs_diff=report.max_abs_diff, repo_id=args.repo_id)

    report = export_sentence_transformers(args.checkpoint, args.out, overrides=overrides, card=card)
    layout = "query / document Router" if report.router else "one pipeline for both sides"
    print(f"wrote {report.path} ({args.format}: {layout}, {report.dim}-d vectors)")
    print(f"max lengths: queries {report.query_max_length} (encode_query), documents {report.doc_max_length} "
          f"(encode_document / encode)")
    if report.query_prompt or report.document_prompt:
        print(f"prompts: queries {report.query_prompt!r} (encode_query), documents {report.document_prompt!r} "
              f"(encode_document; plain encode adds none)")
    print(f"checked: max |difference| to the project's vectors {report.max_abs_diff:.1e} on probe texts")
    print(f"use: SentenceTransformer({str(report.path)!r}).encode_query([...]) / .encode_document([...])")
    repo = args.repo_id or f"<your-user>/{args.out.resolve().name}"
    print(f"model card: {report.path / 'README.md'}; to publish it (not done here): "
          f"hf upload {repo} {report.path} --repo-type model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
