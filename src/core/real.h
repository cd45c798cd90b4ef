/* real.h: the floating-point type of the numerical code.
 * src/model is compiled twice: as float (the program) and with -DTSR_F64 as double (the
 * finite-difference gradient checks). Every function that depends on `real` is named through
 * TSR_R(name), which appends _f64 in the double build so both can link into one test. */
#ifndef TSR_REAL_H
#define TSR_REAL_H
#ifdef TSR_F64
typedef double real;
#define TSR_R(name) name##_f64
#define TSR_REAL_NAME "f64"
#define rexp exp
#define rerf erf
#define rsqrt_ sqrt
#define rlog log
#else
typedef float real;
#define TSR_R(name) name
#define TSR_REAL_NAME "f32"
#define rexp expf
#define rerf erff
#define rsqrt_ sqrtf
#define rlog logf
#endif
#endif
