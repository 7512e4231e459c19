#include "server/strategies/exact_sum.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>

namespace fedlora::server {
namespace {

__extension__ using Int128 = __int128;

// Adds t (|t| < 2^42, finite) truncated toward zero at 2^-64 into the 128-bit (hi, lo). The
// magnitude is split exactly: a − trunc(a) is a's fractional bits, and scaling by powers of two
// is exact; the fraction goes through two 32-bit steps so every conversion is a signed one (no
// branchy double→uint64), and the sign is applied as a branch-free two's-complement negation.
inline void AddTerm(double t, std::uint64_t& lo, std::int64_t& hi) {
  const double a = std::fabs(t);
  const auto whole = static_cast<std::int64_t>(a);
  const double f = (a - static_cast<double>(whole)) * 0x1p32;
  const auto f_hi = static_cast<std::int64_t>(f);
  const auto f_lo = static_cast<std::int64_t>((f - static_cast<double>(f_hi)) * 0x1p32);
  const std::uint64_t neg = 0 - static_cast<std::uint64_t>(t < 0);
  std::uint64_t m_lo =
      ((static_cast<std::uint64_t>(f_hi) << 32) | static_cast<std::uint64_t>(f_lo)) ^ neg;
  std::uint64_t m_hi = static_cast<std::uint64_t>(whole) ^ neg;
  m_lo += neg & 1;
  m_hi += m_lo < (neg & 1) ? 1 : 0;
  lo += m_lo;
  hi = static_cast<std::int64_t>(static_cast<std::uint64_t>(hi) + m_hi + (lo < m_lo ? 1 : 0));
}

template <typename Load>
std::int64_t FoldRange(Load load, double w, std::uint64_t* lo, std::int64_t* hi, std::int64_t begin,
                       std::int64_t end, bool check) {
  for (std::int64_t i = begin; i < end; ++i) {
    const double t = w * load(i);
    if (check && !(std::fabs(t) < ExactSum::kMaxTerm)) return i;  // Also catches NaN.
    AddTerm(t, lo[i], hi[i]);
  }
  return end;
}

// Folds w·x[begin, end) and returns where it stopped: `end`, or the first element whose term is
// out of range (nothing of it added).
std::int64_t Fold(const Tensor& x, double w, std::uint64_t* lo, std::int64_t* hi,
                  std::int64_t begin, std::int64_t end, bool check) {
  const std::byte* p = x.data.data();
  switch (x.dtype) {
    case DType::kF32:
      return FoldRange(
          [p](std::int64_t i) {
            float v;
            std::memcpy(&v, p + 4 * i, 4);
            return static_cast<double>(v);
          },
          w, lo, hi, begin, end, check);
    case DType::kF64:
      return FoldRange(
          [p](std::int64_t i) {
            double v;
            std::memcpy(&v, p + 8 * i, 8);
            return v;
          },
          w, lo, hi, begin, end, check);
    case DType::kBF16:
      return FoldRange(
          [p](std::int64_t i) {
            std::uint16_t v;
            std::memcpy(&v, p + 2 * i, 2);
            return static_cast<double>(BF16ToFloat(v));
          },
          w, lo, hi, begin, end, check);
    case DType::kF16:
      return FoldRange(
          [p](std::int64_t i) {
            std::uint16_t v;
            std::memcpy(&v, p + 2 * i, 2);
            return static_cast<double>(F16ToFloat(v));
          },
          w, lo, hi, begin, end, check);
    case DType::kU32:
      return FoldRange(
          [p](std::int64_t i) {
            std::uint32_t v;
            std::memcpy(&v, p + 4 * i, 4);
            return static_cast<double>(v);
          },
          w, lo, hi, begin, end, check);
  }
  return begin;
}

double ValueAt(const Tensor& x, std::int64_t i) {
  return ToDoubles(
             Tensor{x.dtype,
                    {1},
                    {x.data.begin() + static_cast<std::ptrdiff_t>(i * ByteWidth(x.dtype)),
                     x.data.begin() + static_cast<std::ptrdiff_t>((i + 1) * ByteWidth(x.dtype))}})
      .front();
}

}  // namespace

ExactSum::ExactSum(std::vector<std::int64_t> shape) : shape_(std::move(shape)) {
  std::int64_t n = 1;
  for (std::int64_t d : shape_) n *= d;
  lo_.assign(static_cast<std::size_t>(n), 0);
  hi_.assign(static_cast<std::size_t>(n), 0);
}

Status ExactSum::Add(const Tensor& x, double weight, std::string_view name) {
  const Job job{this, &x, name};
  return AddEach(std::span<const Job>(&job, 1), weight, 1);
}

Status ExactSum::AddEach(std::span<const Job> jobs, double weight, int threads) {
  if (!std::isfinite(weight)) {
    return InvalidArgument("fold weight ", weight, " is not finite");
  }
  for (const Job& job : jobs) {
    if (job.x->shape != job.sum->shape_) {
      return InvalidArgument("tensor '", job.name, "' has shape ", ShapeString(job.x->shape),
                             ", the sum has ", ShapeString(job.sum->shape_));
    }
    FEDLORA_RETURN_IF_ERROR(Validate(*job.x, job.name));
    if (job.sum->terms_ >= static_cast<std::int64_t>(kMaxTerms)) {
      return ResourceExhausted("tensor '", job.name, "': more than ", kMaxTerms,
                               " uploads folded into one sum");
    }
  }
  // Split the elements of all jobs into `threads` contiguous stretches of about equal size.
  struct Piece {
    std::size_t job;
    std::int64_t begin, end, stop;
  };
  std::int64_t total = 0;
  for (const Job& job : jobs) total += job.sum->numel();
  const int workers = std::max(1, std::min<int>(threads, static_cast<int>(total >> 16) + 1));
  const std::int64_t per = (total + workers - 1) / workers;
  std::vector<std::vector<Piece>> plan(static_cast<std::size_t>(workers));
  std::int64_t filled = 0;
  for (std::size_t j = 0; j < jobs.size(); ++j) {
    const std::int64_t n = jobs[j].sum->numel();
    for (std::int64_t b = 0; b < n;) {
      const auto w = static_cast<std::size_t>(std::min<std::int64_t>(filled / per, workers - 1));
      const std::int64_t room = per * static_cast<std::int64_t>(w + 1) - filled;
      const std::int64_t e = std::min(n, b + std::max<std::int64_t>(room, 1));
      plan[w].push_back({j, b, e, e});
      filled += e - b;
      b = e;
    }
  }
  const auto run = [&](std::vector<Piece>& pieces) {
    for (Piece& p : pieces) {
      ExactSum& s = *jobs[p.job].sum;
      p.stop = Fold(*jobs[p.job].x, weight, s.lo_.data(), s.hi_.data(), p.begin, p.end, true);
      if (p.stop != p.end) return;
    }
  };
  if (workers == 1) {
    run(plan[0]);
  } else {
    std::vector<std::thread> pool;
    for (int w = 1; w < workers; ++w)
      pool.emplace_back(run, std::ref(plan[static_cast<std::size_t>(w)]));
    run(plan[0]);
    for (std::thread& t : pool) t.join();
  }
  // All or nothing: on a bad value take out exactly what was added (integer arithmetic).
  const Piece* bad = nullptr;
  for (const auto& pieces : plan) {
    for (const Piece& p : pieces) {
      if (p.stop != p.end &&
          (bad == nullptr || p.job < bad->job || (p.job == bad->job && p.stop < bad->stop))) {
        bad = &p;
      }
    }
  }
  if (bad != nullptr) {
    for (auto& pieces : plan) {
      for (const Piece& p : pieces) {
        ExactSum& s = *jobs[p.job].sum;
        // Pieces after the one that failed on this worker never ran: stop == end was preset,
        // so only ranges actually folded are undone, identified by the worker's progress.
        Fold(*jobs[p.job].x, -weight, s.lo_.data(), s.hi_.data(), p.begin, p.stop, false);
        if (p.stop != p.end) break;
      }
    }
    const Job& job = jobs[bad->job];
    return InvalidArgument("tensor '", job.name, "' element ", bad->stop, " (value ",
                           ValueAt(*job.x, bad->stop), ", weight ", weight,
                           ") is beyond the exact accumulator's range |w·x| < 2^42");
  }
  for (const Job& job : jobs) job.sum->terms_ += weight < 0 ? -1 : 1;
  return OkStatus();
}

std::vector<double> ExactSum::Scaled(double scale) const {
  std::vector<double> out(lo_.size());
  for (std::size_t i = 0; i < out.size(); ++i) {
    const Int128 v = (static_cast<Int128>(hi_[i]) << 64) | static_cast<Int128>(lo_[i]);
    out[i] = static_cast<double>(v) * 0x1p-64 * scale;
  }
  return out;
}

Tensor ExactSum::ToTensor(DType dtype, double scale) const {
  return FromDoubles(dtype, shape_, Scaled(scale));
}

int FoldThreads(std::int64_t elements) {
  if (elements < (std::int64_t{1} << 18)) return 1;
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

}  // namespace fedlora::server
