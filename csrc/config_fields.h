/* config_fields.h -- the one list of the model config's fields (tg_config).
 *
 * TG_CONFIG_FIELDS(X) calls X(type, name, need, meaning) once per field, in
 * the order of the struct.  It generates the C struct tg_config (tg.h), the
 * Python binding's parser of the config dict, its complete export back to
 * Python (_C.Model.config) and the schema Python sees (_C.config_fields()),
 * which tgllava.loader.build_config checks its result against.  Add a field here
 * and all four follow.
 *
 *   type     int or float (a C int / float; Python int / float)
 *   name     the field name, the same in C and in the Python dict; one prefix
 *            per module: v_ vision tower, t_ text tower (CLIP or SigLIP, the
 *            *_family field), q_ TG-FOM Q-former, p_ TG-DP perceiver; the LLM
 *            decoder's have none
 *   need     when the field must be given (a field that is not needed may be
 *            left out and is then 0): ALWAYS; TEXT when has_fom or has_dp (the
 *            text tower: a plain LLaVA-1.5 has none); FOM when has_fom;
 *            DP when has_dp
 *   meaning  one line
 */
#ifndef TG_CONFIG_FIELDS_H
#define TG_CONFIG_FIELDS_H

/* when a field must be present (the `need` column, as TG_NEED_##need) */
enum tg_config_need { TG_NEED_ALWAYS = 0, TG_NEED_TEXT = 1, TG_NEED_FOM = 2, TG_NEED_DP = 3 };

/* the tower families of v_family / t_family: transformers' CLIPVisionModel / CLIPTextModel, or
 * SiglipVisionModel / SiglipTextModel (no class token, patch bias, no pre-LN, bidirectional text
 * pooled by its head at the last position; csrc/model/siglip.c) */
enum tg_tower_family { TG_TOWER_CLIP = 0, TG_TOWER_SIGLIP = 1, TG_TOWER_FAMILY_COUNT = 2 };

#define TG_CONFIG_FIELDS(X)                                                                              \
    /* vision tower */                                                                                   \
    X(int, v_family, ALWAYS, "vision tower family (enum tg_tower_family: 0 CLIP, 1 SigLIP)")             \
    X(int, v_hidden, ALWAYS, "vision tower hidden size")                                                 \
    X(int, v_heads, ALWAYS, "vision tower attention heads")                                              \
    X(int, v_layers, ALWAYS, "vision tower encoder layers in the checkpoint")                            \
    X(int, v_ffn, ALWAYS, "vision tower MLP intermediate size")                                          \
    X(int, v_image, ALWAYS, "input image side in pixels (SigLIP: the patches cover the first (S/P)*P)")  \
    X(int, v_patch, ALWAYS, "patch side in pixels")                                                      \
    X(int, v_act, ALWAYS, "vision tower MLP activation (enum tg_act: 1 gelu, 2 quick_gelu, 4 gelu_tanh)") \
    X(int, v_select, ALWAYS, "hidden state used as image features: runs vision layers 1..v_select")      \
    X(float, v_eps, ALWAYS, "vision tower LayerNorm epsilon")                                            \
    /* text tower (the text guide of FOM and DP) */                                                      \
    X(int, t_family, TEXT, "text tower family (enum tg_tower_family: 0 CLIP, 1 SigLIP)")                 \
    X(int, t_hidden, TEXT, "text tower hidden size")                                                     \
    X(int, t_heads, TEXT, "text tower attention heads")                                                  \
    X(int, t_layers, TEXT, "text tower encoder layers")                                                  \
    X(int, t_ffn, TEXT, "text tower MLP intermediate size")                                              \
    X(int, t_vocab, TEXT, "text tokenizer vocabulary size (text ids are in [0, t_vocab))")               \
    X(int, t_positions, TEXT, "text tower positions (longest CLIP text; a SigLIP text is exactly this)")  \
    X(int, t_act, TEXT, "text tower MLP activation (enum tg_act: 1 gelu, 2 quick_gelu, 4 gelu_tanh)")    \
    X(float, t_eps, TEXT, "text tower LayerNorm epsilon")                                                \
    /* TG-FOM Q-former */                                                                                \
    X(int, has_fom, ALWAYS, "1 when the checkpoint has the TG-FOM Q-former (model.mm_cross_attn.*)")     \
    X(int, q_layers, FOM, "Q-former layers")                                                             \
    X(int, q_heads, FOM, "Q-former attention heads")                                                     \
    X(int, q_ffn, FOM, "Q-former query FFN intermediate size")                                           \
    X(int, q_queries, FOM, "Q-former query tokens (one per image patch)")                                \
    X(int, q_cross_freq, FOM, "Q-former layer i has cross attention when i % q_cross_freq == 0")         \
    X(float, q_eps, FOM, "Q-former LayerNorm epsilon")                                                   \
    /* TG-DP perceiver */                                                                                \
    X(int, has_dp, ALWAYS, "1 when the checkpoint has the TG-DP perceiver (model.mm_patch_encoder.*)")   \
    X(int, p_layers, DP, "perceiver layers")                                                             \
    X(int, p_latents, DP, "perceiver latents (visual tokens it adds)")                                   \
    X(int, p_heads, DP, "perceiver query heads")                                                         \
    X(int, p_head_dim, DP, "perceiver head size")                                                        \
    X(int, p_kv_heads, DP, "perceiver key/value heads")                                                  \
    X(int, p_ffn, DP, "perceiver SwiGLU intermediate size")                                              \
    X(int, p_positions, DP, "perceiver position embeddings (at least 4 tiles of patches)")               \
    X(float, p_eps, DP, "perceiver RMSNorm epsilon")                                                     \
    /* projector */                                                                                      \
    X(int, proj_mlp, ALWAYS, "projector: 1 mlp2x_gelu, 0 linear")                                        \
    /* LLM decoder */                                                                                    \
    X(int, hidden, ALWAYS, "LLM hidden size")                                                            \
    X(int, heads, ALWAYS, "LLM attention heads")                                                         \
    X(int, kv_heads, ALWAYS, "LLM key/value heads")                                                      \
    X(int, head_dim, ALWAYS, "LLM head size")                                                            \
    X(int, layers, ALWAYS, "LLM decoder layers")                                                         \
    X(int, ffn, ALWAYS, "LLM MLP intermediate size")                                                     \
    X(int, vocab, ALWAYS, "LLM vocabulary size")                                                         \
    X(int, qkv_bias, ALWAYS, "1 when q/k/v projections have biases (Qwen2)")                             \
    X(int, tie_embeddings, ALWAYS, "1 when the output head is the embedding table")                      \
    X(int, max_len, ALWAYS, "context length in tokens")                                                  \
    X(float, rms_eps, ALWAYS, "LLM RMSNorm epsilon")                                                     \
    X(float, rope_theta, ALWAYS, "rotary embedding base")                                                \
    /* storage */                                                                                        \
    X(int, dtype, ALWAYS,                                                                                \
      "storage of large matrices (enum tg_dtype: 0 f32, 1 f16, 2 bf16, 3 int8, 4 int4; a matrix whose "  \
      "input features are not a multiple of TG_QBLOCK falls back from int8/int4 to f16)")

#endif /* TG_CONFIG_FIELDS_H */
