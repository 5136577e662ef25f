// XLA FFI handlers running 2-D convolutions (NHWC activations, HWIO kernels, float32) and
// their two gradients with oneDNN.
#include <cstdint>
#include <string>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

template <typename D> memory::dims Nchw(D d) { return {d[0], d[3], d[1], d[2]}; }   // logical dims of NHWC
template <typename D> memory::dims Oihw(D d) { return {d[3], d[2], d[0], d[1]}; }   // logical dims of HWIO

memory::desc Md(const memory::dims& dims, tag t) {
  return memory::desc(dims, memory::data_type::f32, t);
}

struct Geometry {
  memory::dims strides, pad_l, pad_r;
};

// Returns `user` as a memory in `want`'s layout, reordering into `scratch` when they differ.
memory AsLayout(dnnl::stream& s, memory user, const memory::desc& want, memory& scratch) {
  if (user.get_desc() == want) return user;
  scratch = memory(want, Engine());
  dnnl::reorder(user, scratch).execute(s, user, scratch);
  return scratch;
}

dnnl::convolution_forward::primitive_desc FwdPd(const memory::desc& x, const memory::desc& w,
                                                const memory::desc& y, const Geometry& g) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, x, w, y,
      g.strides, g.pad_l, g.pad_r);
}

template <typename F>
ffi::Error Guarded(F&& f) {
  try {
    f();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y,
                   int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return Guarded([&] {
    Geometry g{{sh, sw}, {pt, pl}, {pb, pr}};
    auto x_md = Md(Nchw(x.dimensions()), tag::nhwc);
    auto y_md = Md(Nchw(y->dimensions()), tag::nhwc);
    auto wdims = Oihw(w.dimensions());
    auto pd = FwdPd(x_md, Md(wdims, tag::any), y_md, g);
    dnnl::stream s(Engine());
    memory scratch;
    memory w_mem = AsLayout(s, memory(Md(wdims, tag::hwio), Engine(), w.typed_data()),
                            pd.weights_desc(), scratch);
    memory x_mem(x_md, Engine(), x.typed_data()), y_mem(y_md, Engine(), y->typed_data());
    dnnl::convolution_forward(pd).execute(
        s, {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_WEIGHTS, w_mem}, {DNNL_ARG_DST, y_mem}});
    s.wait();
  });
}

ffi::Error BackwardData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                        ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw, int64_t pt,
                        int64_t pb, int64_t pl, int64_t pr) {
  return Guarded([&] {
    Geometry g{{sh, sw}, {pt, pl}, {pb, pr}};
    auto dx_md = Md(Nchw(dx->dimensions()), tag::nhwc);
    auto dy_md = Md(Nchw(dy.dimensions()), tag::nhwc);
    auto wdims = Oihw(w.dimensions());
    auto hint = FwdPd(dx_md, Md(wdims, tag::any), dy_md, g);
    dnnl::convolution_backward_data::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, dx_md, Md(wdims, tag::any), dy_md,
        g.strides, g.pad_l, g.pad_r, hint);
    dnnl::stream s(Engine());
    memory scratch;
    memory w_mem = AsLayout(s, memory(Md(wdims, tag::hwio), Engine(), w.typed_data()),
                            pd.weights_desc(), scratch);
    memory dy_mem(dy_md, Engine(), dy.typed_data()), dx_mem(dx_md, Engine(), dx->typed_data());
    dnnl::convolution_backward_data(pd).execute(
        s, {{DNNL_ARG_DIFF_DST, dy_mem}, {DNNL_ARG_WEIGHTS, w_mem}, {DNNL_ARG_DIFF_SRC, dx_mem}});
    s.wait();
  });
}

ffi::Error BackwardWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                           ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw, int64_t pt,
                           int64_t pb, int64_t pl, int64_t pr) {
  return Guarded([&] {
    Geometry g{{sh, sw}, {pt, pl}, {pb, pr}};
    auto x_md = Md(Nchw(x.dimensions()), tag::nhwc);
    auto dy_md = Md(Nchw(dy.dimensions()), tag::nhwc);
    auto wdims = Oihw(dw->dimensions());
    auto hint = FwdPd(x_md, Md(wdims, tag::any), dy_md, g);
    dnnl::convolution_backward_weights::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, x_md, Md(wdims, tag::any), dy_md,
        g.strides, g.pad_l, g.pad_r, hint);
    dnnl::stream s(Engine());
    memory user(Md(wdims, tag::hwio), Engine(), dw->typed_data());
    memory dw_mem = user.get_desc() == pd.diff_weights_desc()
                        ? user : memory(pd.diff_weights_desc(), Engine());
    memory x_mem(x_md, Engine(), x.typed_data()), dy_mem(dy_md, Engine(), dy.typed_data());
    dnnl::convolution_backward_weights(pd).execute(
        s, {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_DIFF_DST, dy_mem}, {DNNL_ARG_DIFF_WEIGHTS, dw_mem}});
    if (dw_mem != user) dnnl::reorder(dw_mem, user).execute(s, dw_mem, user);
    s.wait();
  });
}

}  // namespace

#define CONV_BINDING                                                                         \
  ffi::Ffi::Bind()                                                                           \
      .Arg<ffi::Buffer<ffi::F32>>()                                                          \
      .Arg<ffi::Buffer<ffi::F32>>()                                                          \
      .Ret<ffi::Buffer<ffi::F32>>()                                                          \
      .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("pt").Attr<int64_t>("pb")       \
      .Attr<int64_t>("pl").Attr<int64_t>("pr")

XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrOnednnConvForward, Forward, CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrOnednnConvBackwardData, BackwardData, CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrOnednnConvBackwardWeights, BackwardWeights,
                              CONV_BINDING);
